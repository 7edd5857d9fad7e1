"""Collections in BEIR layout, first-stage candidates and the head-detection set.

Lookup order for a collection: the data directory (argument, else ``$CORELIB_DATA``), then
``ir_datasets`` (``beir/<name>/test``) or ``datasets`` (``Shitao/MLDR`` for ``mldr/<lang>``),
which need a network. When none works, one error names the directory it looked in.
"""

from __future__ import annotations

import gzip
import json
import math
import logging
import os
import random
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from .errors import CorelibError, UsageError
from .prompts import Document, document_text
from .storage import write_output

log = logging.getLogger(__name__)


class DataError(CorelibError, RuntimeError):
    """A collection or file could not be found or read; the message says how to fix it."""


@dataclass
class Collection:
    name: str
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]
    corpus: dict[str, tuple[str, str]] = field(default_factory=dict)  # id -> (title, text)
    run_files: list[Path] = field(default_factory=list)
    source: str = ""

    @property
    def has_corpus(self) -> bool:
        return bool(self.corpus)

    def document(self, doc_id: str, words: int | None) -> Document:
        try:
            title, text = self.corpus[doc_id]
        except KeyError:
            raise DataError(f"document {doc_id!r} is not in the corpus of {self.name}") from None
        return Document(doc_id, document_text(title, text, words))


@dataclass
class Candidates:
    """First-stage top-k per query, best first, with where they came from."""

    ranking: dict[str, list[str]]
    scores: dict[str, list[float]]
    source: str

    def run(self) -> dict[str, dict[str, float]]:
        """As a run (qid -> doc -> score); rank order is kept by strictly decreasing scores."""
        return {q: {d: float(len(docs) - i) for i, d in enumerate(docs)} for q, docs in self.ranking.items()}


def data_dir(path: str | os.PathLike | None = None) -> Path | None:
    """The data directory: the argument, else ``$CORELIB_DATA``, else None (collections load online). One that
    is named but absent is an error: loading online instead would change the results silently (no stored
    first-stage runs there, so BM25 is computed over the corpus, with other candidates)."""
    given = path or os.environ.get("CORELIB_DATA")
    if not given:
        return None
    root = Path(given).expanduser()
    if not root.is_dir():
        source = "--data, DATA= or data=" if path else "CORELIB_DATA"
        raise DataError(f"data directory {root} ({source}) does not exist: point it at the folder holding the "
                        "collections in the BEIR layout (e.g. ../shared/data), or leave it unset to load them online")
    return root


def _lines(path: Path):
    """(line number, line) of a text file (``.gz``: gzip-compressed). Each line is decoded on its own, so bad
    UTF-8 is an error that names the line holding the byte; a truncated or fake gzip file is an error too."""
    n = 0
    try:
        with (gzip.open(path, "rb") if path.suffix == ".gz" else path.open("rb")) as f:
            for n, raw in enumerate(f, 1):
                try:
                    yield n, raw.decode("utf-8-sig" if n == 1 else "utf-8")  # a byte-order mark is not data
                except UnicodeDecodeError as err:
                    raise DataError(f"{path}:{n}: not valid UTF-8 ({err.reason} at byte {err.start} of the line): "
                                    "save the file as UTF-8") from None
    except (EOFError, gzip.BadGzipFile, zlib.error) as err:
        raise DataError(f"{path}: not a whole gzip file ({type(err).__name__}: {err}; {n} lines read): download or "
                        "compress it again, or give the uncompressed file") from None


def _read_jsonl(path: Path):
    for n, line in _lines(path):
        if line.strip():
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{path}:{n}: not valid JSON ({err.msg} at column {err.colno}): one JSON object per line") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}:{n}: a line must be a JSON object, not {type(row).__name__}")
            yield n, row


def _field(path: Path, n: int, row: dict, name: str, kind: str) -> str:
    if name not in row:
        raise DataError(f"{path}:{n}: the {kind} has no '{name}' field (BEIR layout: {{\"_id\": ..., \"text\": ...}})")
    return row[name]


def _check_id(path: Path, n: int, value: str, what: str) -> str:
    """Ids are part of every record key and of TREC runs: refuse empty ones and ones with whitespace when
    the data is read, not after the forwards."""
    if not value or any(c.isspace() for c in value):
        raise DataError(f"{path}:{n}: the {what} {value!r} is empty or contains whitespace: ids must be single "
                        "tokens (a TREC run cannot hold them); rename it in the data")
    return value


def _text(path: Path, n: int, row: dict, name: str, kind: str, required: bool) -> str:
    value = _field(path, n, row, name, kind) if required else row.get(name)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise DataError(f"{path}:{n}: the {kind}'s '{name}' is a {type(value).__name__} ({str(value)[:40]!r}), not a "
                        f"string: quote it in the JSON")
    return value


def read_qrels(path: Path) -> dict[str, dict[str, int]]:
    """BEIR qrels: a tab-separated header ``query-id corpus-id score`` (optional) and one judgement
    per line. Any other shape is an error naming the file and line."""
    qrels: dict[str, dict[str, int]] = {}
    for n, line in _lines(Path(path)):
        if not line.strip():
            continue
        cols = line.rstrip("\n").rstrip("\r").split("\t")
        if n == 1 and cols[0] == "query-id":
            continue
        if len(cols) != 3:
            hint = (" (columns are separated by spaces: BEIR qrels use tabs)" if len(cols) == 1 and len(line.split()) >= 3
                    else "")
            raise DataError(f"{path}:{n}: a qrels line needs 3 tab-separated columns (query-id, corpus-id, score), "
                            f"found {len(cols)}{hint}")
        try:
            value = float(cols[2])
        except ValueError:
            raise DataError(f"{path}:{n}: the score {cols[2]!r} is not a number") from None
        if not math.isfinite(value) or not value.is_integer():
            raise DataError(f"{path}:{n}: the grade {cols[2]!r} is not a whole number: qrels grades are integers "
                            "(0 not relevant, 1 or more relevant); fix the line (no grade is rounded)")
        score = int(value)
        for what, x in (("query id", cols[0]), ("document id", cols[1])):
            _check_id(path, n, x, what)
        if cols[1] in qrels.get(cols[0], {}):
            raise DataError(f"{path}:{n}: query {cols[0]} judges document {cols[1]} twice")
        qrels.setdefault(cols[0], {})[cols[1]] = score
    return qrels


def read_trec_run(path: Path) -> dict[str, list[tuple[str, float]]]:
    """A TREC run file (``qid Q0 docid rank score tag``, possibly .gz) -> qid -> [(doc, score)] best first."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"TREC run {path} not found (or not a file): give the path of a run file "
                        "('qid Q0 docid rank score tag' per line, possibly .gz)")
    rows: dict[str, list[tuple[int, str, float]]] = {}
    first_line: dict[tuple[str, str], int] = {}
    for n, line in _lines(path):
        cols = line.split()
        if not cols:
            continue
        if len(cols) < 5:
            raise DataError(f"{path}:{n}: a TREC run line needs 'qid Q0 docid rank score tag'")
        if (seen := first_line.setdefault((cols[0], cols[2]), n)) != n:
            raise DataError(f"{path}:{n}: document {cols[2]!r} is ranked again for query {cols[0]!r} (first on line "
                            f"{seen}): a run ranks each document once per query; remove the repeated lines")
        try:
            rows.setdefault(cols[0], []).append((int(cols[3]), cols[2], float(cols[4])))
        except ValueError:
            raise DataError(f"{path}:{n}: rank {cols[3]!r} or score {cols[4]!r} is not a number") from None
    return {q: [(d, s) for _, d, s in sorted(r, key=lambda x: (-x[2], x[0]))] for q, r in rows.items()}


def write_trec_run(run: dict[str, dict[str, float]], path: str | os.PathLike, tag: str = "corelib") -> None:
    """Write a TREC run (atomically onto a regular file; a symlink is followed, a device or FIFO written
    through). Ids with whitespace are refused: no TREC reader could split them back."""
    bad = [x for q, docs in run.items() for x in [q, *docs] if not x or any(c.isspace() for c in x)]
    if bad or any(c.isspace() for c in tag):
        raise DataError(f"ids {bad[:3] or [tag]} are empty or contain whitespace: a TREC run cannot hold them; rename them")
    lines = [f"{q} Q0 {d} {rank} {s:.8g} {tag}\n" for q, docs in run.items()
             for rank, (d, s) in enumerate(sorted(docs.items(), key=lambda x: -x[1]), 1)]
    write_output(path, "".join(lines))


def _load_local(name: str, root: Path, split: str) -> Collection:
    base = root / name
    qrels_path = base / "qrels" / f"{split}.tsv"
    if not (base / "queries.jsonl").is_file() or not qrels_path.is_file():
        raise FileNotFoundError(base)
    qrels = read_qrels(qrels_path)
    queries: dict[str, str] = {}
    for n, r in _read_jsonl(base / "queries.jsonl"):
        qid = _check_id(base / "queries.jsonl", n, str(_field(base / "queries.jsonl", n, r, "_id", "query")), "query id")
        text = _text(base / "queries.jsonl", n, r, "text", "query", required=True)
        if qid in queries:
            raise DataError(f"{base / 'queries.jsonl'}:{n}: query id {qid} appears twice")
        queries[qid] = text
    corpus = {}
    if (base / "corpus.jsonl").is_file():
        for n, r in _read_jsonl(base / "corpus.jsonl"):
            did = _check_id(base / "corpus.jsonl", n, str(_field(base / "corpus.jsonl", n, r, "_id", "document")),
                            "document id")
            if did in corpus:
                raise DataError(f"{base / 'corpus.jsonl'}:{n}: document id {did} appears twice (an earlier line has it)")
            corpus[did] = (_text(base / "corpus.jsonl", n, r, "title", "document", required=False),
                           _text(base / "corpus.jsonl", n, r, "text", "document", required=False))
    if corpus:
        check_judged_documents(base / "qrels" / f"{split}.tsv", qrels, corpus)
    runs = sorted(p for p in (base / "runs").glob("*") if p.name.endswith((".txt", ".txt.gz", ".trec"))) if (base / "runs").is_dir() else []
    return Collection(name, queries, qrels, corpus, runs, source=str(base))


def check_judged_documents(path: Path, qrels: dict[str, dict[str, int]], corpus) -> None:
    """Judged documents the corpus lacks can never be retrieved, so they lower every method's score alike: a
    warning names them (and the queries none of whose relevant documents exist, which score 0 for every method, as
    5 of BEIR's ArguAna queries do); a qrels file none of whose relevant documents exist is refused (every score
    would be 0)."""
    unknown = sorted({d for judged in qrels.values() for d in judged if d not in corpus})
    if not unknown:
        return
    relevant = {q: [d for d, g in judged.items() if g > 0] for q, judged in qrels.items()}
    hopeless = sorted(q for q, docs in relevant.items() if docs and not any(d in corpus for d in docs))
    if hopeless and len(hopeless) == sum(1 for docs in relevant.values() if docs):
        raise DataError(f"{path}: none of the relevant documents it judges is in the corpus (e.g. {', '.join(unknown[:3])}): "
                        "the qrels belong to another corpus, or the corpus file is incomplete")
    log.warning("%s judges %d document(s) the corpus lacks (e.g. %s)%s", path, len(unknown), ", ".join(unknown[:5]),
                f"; {len(hopeless)} queries have no relevant document in the corpus and score 0 for every method "
                f"({', '.join(hopeless[:5])})" if hopeless else "")


# BEIR sets whose evaluation set has an id of its own in ir_datasets (BEIR scores MS MARCO on dev;
# Touché on its v2 judgements).
IR_DATASETS_IDS = {"msmarco": "beir/msmarco/dev", "webis-touche2020": "beir/webis-touche2020/v2"}


def _load_ir_datasets(name: str, split: str) -> Collection:
    import ir_datasets

    if name in IR_DATASETS_IDS:
        ds_id = IR_DATASETS_IDS[name]
        ds = ir_datasets.load(ds_id)
    else:
        try:  # most BEIR sets have per-split ids; a few (trec-covid, touche, arguana) have none
            ds_id = f"beir/{name}/{split}"
            ds = ir_datasets.load(ds_id)
        except KeyError:
            ds_id = f"beir/{name}"
            ds = ir_datasets.load(ds_id)
    queries = {q.query_id: q.text for q in ds.queries_iter()}
    qrels: dict[str, dict[str, int]] = {}
    for r in ds.qrels_iter():
        qrels.setdefault(r.query_id, {})[r.doc_id] = int(r.relevance)
    corpus = {d.doc_id: (getattr(d, "title", "") or "", d.text) for d in ds.docs_iter()}
    return Collection(name, queries, qrels, corpus, [], source=f"ir_datasets:{ds_id}")


def _load_mldr(lang: str, split: str) -> Collection:
    import datasets

    rows = datasets.load_dataset("Shitao/MLDR", lang, split=split)
    corpus_rows = datasets.load_dataset("Shitao/MLDR", f"corpus-{lang}", split="corpus")
    queries = {r["query_id"]: r["query"] for r in rows}
    qrels = {r["query_id"]: {p["docid"]: 1 for p in r["positive_passages"]} for r in rows}
    corpus = {r["docid"]: ("", r["text"]) for r in corpus_rows}
    return Collection(f"mldr/{lang}", queries, qrels, corpus, [], source=f"datasets:Shitao/MLDR/{lang}")


def load_collection(name: str, data: str | os.PathLike | None = None, split: str = "test") -> Collection:
    """Load ``name`` (e.g. ``scifact``, ``xquad-r/de``, ``mldr/de``) from the data directory or online."""
    if not isinstance(name, str) or not name.strip() or name.startswith("/") or any(
            part in ("", ".", "..") for part in name.split("/")):
        raise DataError(f"collection {name!r}: give a collection's name inside the data directory, e.g. 'scifact' or "
                        "'xquad-r/de' (no empty, '.' or '..' part, no leading '/')")
    root = data_dir(data)
    if root is not None:
        try:
            return _load_local(name, root, split)
        except FileNotFoundError as err:
            log.warning("%s is not in the data directory %s (%s): loading it online", name, root, err)
    try:
        if name.startswith("mldr/"):
            return _load_mldr(name.split("/", 1)[1], split)
        return _load_ir_datasets(name, split)
    except Exception as err:  # offline, unknown name, missing package
        where = f"in {root / name}" if root is not None else "in no data directory (none given)"
        raise DataError(
            f"collection {name!r} not found {where} (BEIR layout: queries.jsonl, qrels/{split}.tsv, "
            f"corpus.jsonl), and the online fallback failed ({type(err).__name__}: {str(err)[:120]}). "
            f"{_did_you_mean(name, root)}Pass --data DIR or set CORELIB_DATA to a directory holding it."
        ) from err


def _did_you_mean(name: str, root: Path | None) -> str:
    """'Did you mean ...?' naming the data directory's closest collections (a nested one as 'xquad-r/de')."""
    import difflib

    if root is None:
        return ""
    held = sorted(str(q.parent.relative_to(root)) for q in root.glob("**/queries.jsonl") if q.parent != root)
    close = difflib.get_close_matches(name, held, n=3, cutoff=0.6)
    return f"Did you mean {' or '.join(map(repr, close))}? " if close else ""


def choose_run_file(collection: Collection) -> Path | None:
    """The BM25 run of a collection: prefer Anserini's BEIR flat runs, then any bm25 run."""
    if not collection.run_files:
        return None
    ranked = sorted(collection.run_files, key=lambda p: ("bm25-flat" not in p.name, "bm25" not in p.name, p.name))
    return ranked[0]


def sample_queries(collection: Collection, max_queries: int | None, seed: int = 0) -> list[str]:
    """Judged queries with text, a seeded random subset of ``max_queries`` of them, sorted."""
    qids = sorted(q for q in collection.qrels if q in collection.queries and any(v > 0 for v in collection.qrels[q].values()))
    if max_queries is not None and max_queries < len(qids):
        qids = sorted(random.Random(seed).sample(qids, max_queries))
    return qids


@dataclass(frozen=True)
class DetectionSample:
    """One head-detection prompt: documents in prompt order, the positive at ``positive``."""

    query_id: str
    query: str
    docs: tuple[Document, ...]
    positive: int


def positive_positions(num_docs: int, count: int) -> list[int]:
    """``count`` prompt positions (0 = first) for the positive among ``num_docs`` slots: the centres of
    ``count`` equal slices of the prompt. The first and last slots are avoided on purpose: a head
    that always attends to the first (or last) document would otherwise win every sample placed there."""
    if not 1 <= count <= num_docs:
        raise UsageError(f"positions={count}: choose between 1 and {num_docs}, the documents per prompt")
    return sorted({min(num_docs - 1, int((i + 0.5) * num_docs / count)) for i in range(count)})


def load_detection(
    data: str | os.PathLike | None = None,
    num_samples: int = 100,
    num_negatives: int = 19,
    positions: int = 2,
    words: int | None = 100,
    seed: int = 0,
    path: str | os.PathLike | None = None,
) -> list[DetectionSample]:
    """Detection prompts from ``nq-open-detection/detection.jsonl``: a query, its positive, and negatives
    that are other questions' gold passages retrieved by BM25 (topical at best; easier than the paper's
    dense-retrieved hard negatives).

    The first ``num_samples`` queries, each with its first ``num_negatives`` negatives (stored BM25 order)
    and the positive at ``positions`` places (``positive_positions``): num_samples * positions prompts.
    Negatives keep a seeded random order around the positive.
    """
    if path is None:
        root = data_dir(data)
        path = root / "nq-open-detection" / "detection.jsonl" if root else None
    if path is None or not Path(path).is_file():
        raise DataError(
            f"detection set not found at {path}: give the data directory holding nq-open-detection/detection.jsonl "
            "(--data DIR or CORELIB_DATA)"
        )
    samples = []
    rng = random.Random(seed)
    for n, (line, row) in enumerate(_read_jsonl(Path(path))):
        if n >= num_samples:
            break
        for name in ("query_id", "query", "positive", "negatives"):
            _field(Path(path), line, row, name, "detection row")
        if not isinstance(row["negatives"], list) or not isinstance(row["positive"], dict):
            raise DataError(f"{path}:{line}: a detection row needs 'positive' as an object and 'negatives' as a list "
                            "of objects with _id, title and text")
        negs = row["negatives"][:num_negatives]
        if len(negs) < num_negatives:
            raise DataError(f"{row['query_id']} has {len(negs)} negatives, fewer than num_negatives={num_negatives}")
        neg_docs = [Document(str(d["_id"]), document_text(d.get("title"), d.get("text", ""), words)) for d in negs]
        rng.shuffle(neg_docs)
        pos_doc = Document(str(row["positive"]["_id"]), document_text(row["positive"].get("title"), row["positive"].get("text", ""), words))
        for p in positive_positions(num_negatives + 1, positions):
            docs = neg_docs[:p] + [pos_doc] + neg_docs[p:]
            samples.append(DetectionSample(str(row["query_id"]), row["query"], tuple(docs), p))
    return samples
