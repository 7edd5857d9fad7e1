"""Build the head-detection set (``nq-open-detection/detection.jsonl``) from NQ-open.

Each row is an NQ-open question, its gold passage as the positive, and negatives that are other questions' gold
passages retrieved by BM25 (k1 0.9, b 0.4) for the question, skipping any passage that contains an answer string
(token match, as DPR judges a passage to hold the answer). A question with too few such neighbours is padded with
seeded random answer-free passages (``bm25: 0.0``). ``load_detection`` reads what ``write_detection_set`` writes.

The source is the NQ-open oracle file of Liu et al. ("Lost in the Middle"): one question per line with its answers
and its gold passage. ``read_nq_open`` takes a local copy (``.jsonl`` or ``.jsonl.gz``) or, online, the pinned URL
through ``datasets``. The study's offline default stays the stored file under the data directory
(``data.load_detection``); this module is how that file is made again, or made larger.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import random
import string
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .data import DataError
from .errors import UsageError
from .storage import check_output

log = logging.getLogger(__name__)

NQ_OPEN_ORACLE_URL = ("https://raw.githubusercontent.com/nelson-liu/lost-in-the-middle/"
                      "29b8a6d042ce29abccee3db1a73171a107d7e6af/qa_data/nq-open-oracle.jsonl.gz")
BM25_K1, BM25_B = 0.9, 0.4
# a few invented questions in the oracle file's format, shipped to try the builder offline
NQ_OPEN_SAMPLE = Path(__file__).parent / "samples" / "nq-open-oracle-sample.jsonl"


@dataclass(frozen=True)
class Passage:
    id: str
    title: str
    text: str


@dataclass(frozen=True)
class NQQuestion:
    id: str
    question: str
    answers: tuple[str, ...]
    gold: Passage


def read_nq_open(source: str | os.PathLike = NQ_OPEN_ORACLE_URL, limit: int | None = None) -> list[NQQuestion]:
    """The first ``limit`` questions of an NQ-open oracle file (``question``, ``answers``, ``ctxs`` holding the
    gold passage with ``isgold``), numbered in file order (``nqopen-0000``; gold passages ``nqopen-gold-0000``).
    A URL is read through ``datasets`` (online); a path is read here."""
    text = str(source)
    if text.startswith(("http://", "https://")):
        try:
            from datasets import load_dataset
        except ImportError as err:  # pragma: no cover - datasets is a dependency of the study
            raise UsageError("reading NQ-open from a URL needs `datasets`: pip install datasets") from err
        rows: Iterable[dict] = load_dataset("json", data_files=text, split="train")
    else:
        path = Path(source)
        if not path.is_file():
            raise DataError(f"{path} is not a file: give the NQ-open oracle file (nq-open-oracle.jsonl.gz of "
                            f"Lost in the Middle), or its URL when online ({NQ_OPEN_ORACLE_URL})")
        rows = _read_lines(path)
    questions = []
    for n, row in enumerate(rows):
        if limit is not None and n >= limit:
            break
        questions.append(_question(row, n, text))
    if not questions:
        raise DataError(f"{text} holds no questions")
    return questions


def _read_lines(path: Path):
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if line.strip():
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as err:
                    raise DataError(f"{path}:{line_no}: not valid JSON ({err.msg}): one JSON object per line") from None


def _question(row: dict, n: int, source: str) -> NQQuestion:
    missing = [k for k in ("question", "answers", "ctxs") if k not in row]
    if missing:
        raise DataError(f"{source}: question {n} lacks {', '.join(missing)}: an NQ-open oracle row holds "
                        "question, answers and ctxs (the gold passage)")
    ctxs = row["ctxs"] or []
    gold = next((c for c in ctxs if c.get("isgold")), ctxs[0] if ctxs else None)
    if gold is None:
        raise DataError(f"{source}: question {n} has no passage in ctxs")
    return NQQuestion(f"nqopen-{n:04d}", str(row["question"]), tuple(str(a) for a in row["answers"]),
                      Passage(f"nqopen-gold-{n:04d}", str(gold.get("title") or ""), str(gold.get("text") or "")))


def answer_tokens(text: str) -> list[str]:
    """Lower-cased, accent-folded words without punctuation: the tokens an answer is matched on."""
    text = unicodedata.normalize("NFD", text.lower())
    text = "".join(ch for ch in text if unicodedata.category(ch) != "Mn")
    text = "".join(" " if ch in string.punctuation else ch for ch in text)
    return text.split()


def has_answer(passage: str | list[str], answers: Sequence[str]) -> bool:
    """Whether any answer's tokens occur as a contiguous run of the passage's tokens (DPR's token match); the
    passage as text, or as its ``answer_tokens`` already."""
    tokens = answer_tokens(passage) if isinstance(passage, str) else passage
    for answer in answers:
        needle = answer_tokens(answer)
        if needle and any(tokens[i:i + len(needle)] == needle for i in range(len(tokens) - len(needle) + 1)):
            return True
    return False


def build_detection_set(questions: Sequence[NQQuestion], num_negatives: int = 29, seed: int = 0) -> list[dict]:
    """The detection rows: for each question, its gold passage and ``num_negatives`` answer-free gold passages of
    the other questions, most BM25-similar to the question first (each with its ``bm25`` score), padded with
    seeded random answer-free passages (score 0.0) where BM25 finds too few."""
    if num_negatives < 1:
        raise UsageError(f"num_negatives={num_negatives}: ask for at least one negative")
    import bm25s

    # one pool entry per distinct passage (several questions can share a gold passage)
    pool: dict[tuple[str, str], Passage] = {}
    for q in questions:
        pool.setdefault((q.gold.title, q.gold.text), q.gold)
    passages = list(pool.values())
    pool_index = {key: j for j, key in enumerate(pool)}
    if len(passages) <= num_negatives:
        raise UsageError(f"{len(passages)} distinct gold passages cannot give {num_negatives} negatives per question: "
                         "give more questions or ask for fewer negatives")
    corpus = [f"{p.title} {p.text}".strip().lower() for p in passages]
    tokens = [answer_tokens(text) for text in corpus]  # each passage's answer-match tokens, once
    retriever = bm25s.BM25(k1=BM25_K1, b=BM25_B)
    retriever.index(bm25s.tokenize(corpus, stopwords="en", show_progress=False), show_progress=False)
    queries = bm25s.tokenize([q.question.lower() for q in questions], stopwords="en", show_progress=False)
    ranked, scores = retriever.retrieve(queries, k=len(passages), show_progress=False)
    rng = random.Random(seed)
    rows = []
    for i, q in enumerate(questions):
        chosen, seen = [], {pool_index[(q.gold.title, q.gold.text)]}
        for j, score in zip(ranked[i], scores[i]):
            j = int(j)
            if float(score) <= 0 or len(chosen) == num_negatives:
                break
            if j not in seen and not has_answer(tokens[j], q.answers):
                chosen.append((passages[j], float(score)))
                seen.add(j)
        if len(chosen) < num_negatives:
            rest = [j for j in range(len(passages)) if j not in seen and not has_answer(tokens[j], q.answers)]
            rng.shuffle(rest)
            chosen += [(passages[j], 0.0) for j in rest[: num_negatives - len(chosen)]]
        if len(chosen) < num_negatives:
            raise DataError(f"{q.id}: only {len(chosen)} answer-free passages among the other questions' gold passages: "
                            "give more questions or ask for fewer negatives")
        rows.append({"query_id": q.id, "query": q.question, "answers": list(q.answers),
                     "positive": {"_id": q.gold.id, "title": q.gold.title, "text": q.gold.text},
                     "negatives": [{"_id": p.id, "title": p.title, "text": p.text, "bm25": round(s, 4)} for p, s in chosen]})
    return rows


def write_detection_set(rows: Sequence[dict], out: str | os.PathLike) -> Path:
    """Write the rows as ``detection.jsonl`` (a directory gets ``nq-open-detection/detection.jsonl`` under it)."""
    path = Path(out)
    if path.is_dir():
        path = path / "nq-open-detection" / "detection.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    check_output(path)
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    log.info("wrote %d detection rows to %s", len(rows), path)
    return path
