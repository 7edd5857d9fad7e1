"""Attention records: what one forward of a prompt leaves for scoring, and the on-disk store.

A record keeps, for every head, the token scores of the document tokens (calibrated:
s(q) - s("N/A")) and the uncalibrated attention mass of each document. Every method (ICR, QR-R,
CoRe-R, a head-count sweep, a random-head control) is a function of records, so no forward is
repeated.

Records are keyed by everything that determines them: the model's fingerprint (its exact weights
and tokenizer, see ``models.ModelSpec``), dtype, layers run, calibration, the query id and text,
and the documents' ids and texts in prompt order. The key is computable without loading the
model, so a warm cache never loads one. Files are safetensors (no pickle) with the key's fields
in their metadata, written atomically, and checked against the request when read: an entry of
another format or another request is recomputed, never used.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import statistics
import time
from collections import OrderedDict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterable, Sequence

import torch

from .attention import calibrated_head_token_scores, head_token_scores, invariant_head_token_scores
from .errors import UsageError
from .models import LoadedModel, ModelSpec, as_spec, dtype_name
from .prompts import CONTENT_FREE_QUERY, Document, Prompt, PromptError, build_invariant_prompt, build_prompt, canonical_order
from .progress import RecordTally, progress_bar
from .storage import StorageError, cache_root, content_digest, header_metadata, read_checked_tensors, save_tensors

log = logging.getLogger(__name__)

FORMAT_VERSION = 2  # bump when the prompt, the record layout or the key changes: old entries then miss


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
    # first-stage rank (0-based) of the document at each prompt position, where the candidates were shuffled
    permutation: tuple[int, ...] | None = None

    @property
    def num_layers(self) -> int:
        return self.token_scores.shape[0]

    @property
    def doc_lengths(self) -> torch.Tensor:
        return self.bounds[1:] - self.bounds[:-1]

    @property
    def nbytes(self) -> int:
        ts = [self.token_scores, self.doc_mass, self.doc_mass_na, self.bounds]
        return sum(t.numel() * t.element_size() for t in ts if t is not None)

    def first_layers(self, n: int) -> "QueryRecord":
        """The same record restricted to layers 0..n-1 (exactly what a run stopped after layer n-1 gives)."""
        cut = lambda t: None if t is None else t[:n]  # noqa: E731
        return replace(self, token_scores=cut(self.token_scores), doc_mass=cut(self.doc_mass), doc_mass_na=cut(self.doc_mass_na))


@dataclass(frozen=True)
class RecordRequest:
    """One prompt to record: a query and its documents in prompt order."""

    query_id: str
    query: str
    docs: tuple[Document, ...]
    group: str = "adhoc"  # a folder of the store (the collection's name)
    positive: int | None = None  # prompt index of the positive (detection prompts)
    # first-stage rank of the document at each prompt position, for shuffled candidates (None: the order's
    # default, ICR's rank 1 last); part of the key, stored with the record
    permutation: tuple[int, ...] | None = None
    # the permutation-invariant prompt (``prompts.build_invariant_prompt``); part of the key where True
    invariant: bool = False

    def canonical(self) -> "RecordRequest":
        """An invariant request with its documents in ``canonical_order`` (the positive's index moved with it), so
        that every order of the same candidates is one record; any other request unchanged."""
        if not self.invariant:
            return self
        docs = canonical_order(self.docs)
        positive = None if self.positive is None else docs.index(self.docs[self.positive])
        return replace(self, docs=tuple(docs), positive=positive, permutation=None)


# ----------------------------------------------------------------------------- building


def _doc_token_index(prompt: Prompt) -> tuple[torch.Tensor, torch.Tensor]:
    idx = [torch.arange(s, e) for s, e in prompt.doc_spans]
    bounds = torch.tensor([0] + [e - s for s, e in prompt.doc_spans]).cumsum(0)
    return torch.cat(idx) if idx else torch.zeros(0, dtype=torch.long), bounds


def segment_sum(x: torch.Tensor, bounds: torch.Tensor) -> torch.Tensor:
    """Sum over each document's tokens on the last axis: [..., T] -> [..., N], ``bounds`` the [N+1] offsets of the
    documents from 0. Each document's tokens are added on their own (no running total over the prompt, whose
    differences would lose the late documents' precision)."""
    lengths = bounds.diff()
    seg = torch.repeat_interleave(torch.arange(len(lengths), device=x.device), lengths.to(x.device))
    out = torch.zeros(*x.shape[:-1], len(lengths), dtype=x.dtype, device=x.device)
    return out.index_add_(-1, seg, x[..., : int(bounds[-1])])


def check_context(lm: LoadedModel, prompt: Prompt, words: int | None, num_docs: int, query_id: str = "") -> None:
    if lm.max_positions is not None and prompt.full_length > lm.max_positions:
        query_tokens = prompt.query_span[1] - prompt.query_span[0]
        which = f"query {query_id}'s prompt" if query_id else "the prompt"
        fix = (f"the query alone has {query_tokens} tokens: shorten it (words and top_k limit the documents only)"
               if query_tokens >= lm.max_positions // 2 else f"lower words (now {words}) or top_k (now {num_docs})")
        raise PromptError(f"{which} has {prompt.full_length} tokens but {lm.model_id} takes at most {lm.max_positions}: "
                          f"{fix}")


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
    invariant: bool = False,
) -> QueryRecord:
    """Run the model on one prompt (docs in prompt order) and keep what scoring needs (``invariant``: the
    permutation-invariant prompt, ``prompts.build_invariant_prompt``)."""
    build = build_invariant_prompt if invariant else build_prompt
    prompt = build(lm.tokenizer, query, docs, lm.prefix, lm.suffix)
    check_context(lm, prompt, words, len(docs), query_id)
    index, bounds = _doc_token_index(prompt)
    if invariant:
        na = build(lm.tokenizer, CONTENT_FREE_QUERY, docs, lm.prefix, lm.suffix) if calibrate else None
        scores = invariant_head_token_scores(lm, prompt, na, num_layers)
        if not calibrate:
            q_tok = scores[..., index]
            return QueryRecord(query_id, list(prompt.doc_ids), bounds, q_tok, segment_sum(q_tok, bounds), None, False,
                               len(prompt.input_ids), positive)
        q_tok, na_tok = (x[..., index] for x in scores)
        return QueryRecord(query_id, list(prompt.doc_ids), bounds, q_tok - na_tok, segment_sum(q_tok, bounds),
                           segment_sum(na_tok, bounds), True, len(prompt.input_ids), positive)
    if calibrate:
        na = build_prompt(lm.tokenizer, CONTENT_FREE_QUERY, docs, lm.prefix, lm.suffix)
        if na.doc_spans != prompt.doc_spans:
            raise PromptError("the N/A prompt tokenises the documents differently; calibration needs a shared prefix")
        s_q, s_na = calibrated_head_token_scores(lm, prompt.input_ids, prompt.query_span, na.input_ids, na.query_span, num_layers)
        q_tok, na_tok = s_q[..., index], s_na[..., index]
        return QueryRecord(query_id, list(prompt.doc_ids), bounds, q_tok - na_tok, segment_sum(q_tok, bounds),
                           segment_sum(na_tok, bounds), True, len(prompt.input_ids), positive)
    s_q = head_token_scores(lm, prompt.input_ids, prompt.query_span, num_layers)
    q_tok = s_q[..., index]
    return QueryRecord(query_id, list(prompt.doc_ids), bounds, q_tok, segment_sum(q_tok, bounds), None, False,
                       len(prompt.input_ids), positive)


# ----------------------------------------------------------------------------- keys


def record_fields(fingerprint: str, dtype, layers: int, calibrate: bool, request: RecordRequest) -> dict:
    """Everything a record depends on (and its identity: the query id), as JSON-able fields."""
    if not fingerprint:
        raise UsageError("the model has no fingerprint: load it with load_model / from_modules")
    return {"format": FORMAT_VERSION, "model": fingerprint, "dtype": dtype_name(dtype),
            "layers": int(layers), "calibrate": bool(calibrate), "group": request.group,
            "query_id": str(request.query_id), "query": content_digest(request.query),
            "doc_ids": [d.doc_id for d in request.docs], "texts": content_digest([d.text for d in request.docs]),
            "positive": request.positive,
            # only shuffled requests carry it, so the keys of records in ICR's order are those they always had
            **({"permutation": list(request.permutation)} if request.permutation is not None else {}),
            **({"layout": "invariant"} if request.invariant else {})}


def record_key(fields: dict) -> str:
    return content_digest(fields)[:32]


# ----------------------------------------------------------------------------- store


_TENSORS = ("bounds", "token_scores", "doc_mass", "doc_mass_na")


class RecordStore:
    """Records on disk (safetensors, one file each, named by their key), with an optional
    in-memory LRU of at most ``memory_mb`` megabytes so that sweeps re-read nothing."""

    def __init__(self, root: str | os.PathLike | None = None, memory_mb: float = 0):
        self.root = Path(root) if root is not None else cache_root() / "records"
        self.memory_bytes = int(memory_mb * 2**20)
        self._memory: OrderedDict[str, QueryRecord] = OrderedDict()
        self._memory_used = 0
        self._swept: set[Path] = set()

    def path(self, model_id: str, group: str, key: str) -> Path:
        def safe(s: str) -> str:  # one folder name, never a way out of the store ('..', '.', '')
            s = s.replace("/", "__")
            return s if s not in ("", ".", "..") else f"_{s}_"
        return self.root / f"v{FORMAT_VERSION}" / safe(model_id) / safe(group) / f"{key}.safetensors"

    # memory --------------------------------------------------------------------------
    def _remember(self, key: str, record: QueryRecord) -> None:
        if self.memory_bytes <= 0 or record.nbytes > self.memory_bytes:
            return
        if key in self._memory:
            self._memory.move_to_end(key)
            return
        self._memory[key] = record
        self._memory_used += record.nbytes
        while self._memory_used > self.memory_bytes:
            _, old = self._memory.popitem(last=False)
            self._memory_used -= old.nbytes

    # disk ----------------------------------------------------------------------------
    def read(self, path: Path, fields: dict) -> QueryRecord | None:
        """The record at ``path`` if it is whole and was made for exactly ``fields``, else None."""
        found = read_checked_tensors(path, fields, _TENSORS, what="record")
        if found is None:
            return None
        meta, tensors = found
        try:
            record = QueryRecord(
                query_id=fields["query_id"], doc_ids=list(fields["doc_ids"]), bounds=tensors["bounds"],
                token_scores=tensors["token_scores"], doc_mass=tensors["doc_mass"],
                doc_mass_na=tensors.get("doc_mass_na"), calibrated=fields["calibrate"],
                num_tokens=int(meta["num_tokens"]), positive=fields["positive"],
                permutation=tuple(fields["permutation"]) if "permutation" in fields else None)
            n, layers = len(record.doc_ids), fields["layers"]
            if (record.token_scores.shape[0] != layers or record.doc_mass.shape[0] != layers
                    or record.doc_mass.shape[-1] != n or len(record.bounds) != n + 1
                    or record.token_scores.shape[-1] != int(record.bounds[-1])):
                raise UsageError("tensor shapes do not match the key")
        except (KeyError, ValueError) as err:  # a damaged or foreign file: recompute it
            log.warning("%s is unreadable (%s): recomputing it", path, err)
            return None
        return record

    def write(self, path: Path, record: QueryRecord, fields: dict, seconds: float | None = None) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._sweep(path.parent)
        tensors = {name: getattr(record, name) for name in _TENSORS if getattr(record, name) is not None}
        meta = {"fields": json.dumps(fields, sort_keys=True, ensure_ascii=False), "num_tokens": str(record.num_tokens)}
        if seconds is not None:  # what computing it took (for `pending`'s estimate; not part of the record)
            meta["seconds"] = f"{seconds:.3f}"
        from safetensors import SafetensorError

        try:
            save_tensors(path, tensors, meta)
        except (OSError, SafetensorError) as err:  # safetensors raises its own error on a full disk
            from .progress import RecordTally

            why = getattr(err, "strerror", None) or str(err)
            kept = f"{RecordTally.cached} of {RecordTally.needed} records of this run" if RecordTally.needed else "every record"
            raise StorageError(getattr(err, "errno", None) or errno.EIO,
                               f"cannot store a record in {self.root} ({why}; a full disk?): {kept} "
                               "cached so far are kept; free space there, or point CORELIB_CACHE (or --cache) at another "
                               "folder, then rerun the same command to resume") from None

    def _sweep(self, directory: Path, older_than_s: float = 3600) -> None:
        """Remove temporary files that killed writers left (once per folder and process)."""
        if directory in self._swept:
            return
        self._swept.add(directory)
        now = time.time()
        for tmp in directory.glob("*.tmp"):
            try:
                if now - tmp.stat().st_mtime > older_than_s:
                    tmp.unlink()
                    log.info("removed %s, left by an interrupted writer", tmp)
            except FileNotFoundError:
                pass

    def get(self, model_id: str, fields: dict) -> QueryRecord | None:
        key = record_key(fields)
        if key in self._memory:
            self._memory.move_to_end(key)
            return self._memory[key]
        record = self.read(self.path(model_id, fields["group"], key), fields)
        if record is not None:
            self._remember(key, record)
        return record

    def held_path(self, model_id: str, fields: dict) -> Path | None:
        """The file of the record for ``fields`` if it exists (by name only: nothing is read, and a damaged
        file still counts; ``get`` finds and recomputes it)."""
        path = self.path(model_id, fields["group"], record_key(fields))
        return path if path.is_file() else None

    def put(self, model_id: str, fields: dict, record: QueryRecord, seconds: float | None = None) -> QueryRecord:
        key = record_key(fields)
        self.write(self.path(model_id, fields["group"], key), record, fields, seconds)
        self._remember(key, record)
        return record


# ----------------------------------------------------------------------------- many records


def _identity(model) -> tuple[str, str, object, int, Callable[[], LoadedModel]]:
    """model_id, fingerprint, dtype, layers of the full model, and how to get the loaded model."""
    spec = as_spec(model)
    return spec.model_id, spec.fingerprint, spec.dtype, spec.num_layers, spec.load


def get_records(
    model: LoadedModel | ModelSpec,
    requests: Iterable[RecordRequest],
    *,
    calibrate: bool = True,
    num_layers: int | None = None,
    words: int | None = None,
    store: RecordStore | None = None,
    progress: str | None = None,
) -> list[QueryRecord]:
    """The record of every request, from ``store`` when it holds it, else computed (and stored).

    A ModelSpec is loaded only when a record is missing. ``num_layers`` runs only the first layers
    (a head subset's early exit); a stored all-layer record serves such a request exactly.
    """
    model_id, fingerprint, dtype, total, load = _identity(model)
    layers = total if num_layers is None else num_layers
    requests = [r.canonical() for r in requests]

    def compute(req: RecordRequest) -> QueryRecord:
        lm = load()
        record = build_record(lm, req.query, list(req.docs), query_id=req.query_id, calibrate=calibrate,
                              num_layers=layers, positive=req.positive, words=words, invariant=req.invariant)
        return record if req.permutation is None else replace(record, permutation=req.permutation)

    if store is None:
        done: dict[RecordRequest, QueryRecord] = {}  # an invariant prompt's orders are one request: computed once
        return [done[req] if req in done else done.setdefault(req, compute(req)) for req in progress_bar(requests, progress)]
    out: list[QueryRecord | None] = []
    missing: dict[str, list] = {}  # key -> (fields, indices of the requests it serves)
    for i, req in enumerate(requests):  # first everything the store holds: no progress bar, no model
        fields = record_fields(fingerprint, dtype, layers, calibrate, req)
        found = store.get(model_id, fields)
        if found is None and layers < total:  # an all-layer record holds these layers exactly
            full = store.get(model_id, {**fields, "layers": total})
            found = None if full is None else full.first_layers(layers)
        out.append(found)
        if found is None:
            missing.setdefault(record_key(fields), [fields, []])[1].append(i)
    RecordTally.start(len(requests), sum(r is not None for r in out))
    for fields, indices in progress_bar(list(missing.values()), progress):
        t0 = time.perf_counter()
        record = store.put(model_id, fields, compute(requests[indices[0]]), seconds=time.perf_counter() - t0)
        for i in indices:
            out[i] = record
        RecordTally.stored(len(indices))
    return out


def header_seconds(path: Path) -> float | None:
    """The compute seconds a record file's header holds (None: written before records stored it)."""
    value = header_metadata(path).get("seconds")
    return None if value is None else float(value)


@dataclass(frozen=True)
class CacheStatus:
    """What a cache holds of a list of requests: the missing ones, and how long computing some of the
    cached ones took (seconds, where their files say)."""

    needed: int
    missing: list
    seconds: list[float]

    @classmethod
    def collect(cls, items: Sequence, held: Callable[[object], Path | None],
                seconds: Callable[[Path], float | None], timings: int) -> "CacheStatus":
        """``held(item)``: the file that holds an item (None: missing); ``seconds(file)``: its compute
        time, read for at most ``timings`` held items."""
        missing, times = [], []
        for item in items:
            path = held(item)
            if path is None:
                missing.append(item)
            elif len(times) < timings and (t := seconds(path)) is not None:
                times.append(t)
        return cls(len(items), missing, times)

    @property
    def median_s(self) -> float | None:
        """The median of ``seconds`` (None: no timings)."""
        return statistics.median(self.seconds) if self.seconds else None

    @property
    def estimate_s(self) -> float | None:
        """Seconds to compute the missing ones at the median time of the cached ones (None: no timings)."""
        if not self.missing:
            return 0.0
        return None if self.median_s is None else len(self.missing) * self.median_s


def record_status(
    model: LoadedModel | ModelSpec,
    requests: Iterable[RecordRequest],
    *,
    calibrate: bool = True,
    num_layers: int | None = None,
    store: RecordStore,
    timings: int = 10,
) -> CacheStatus:
    """Which requests' records ``store`` lacks, looked up as ``get_records`` would (an all-layer record
    serves a request for fewer layers), with the compute seconds of up to ``timings`` of the cached
    ones. Nothing is loaded or computed; only file names and a few headers are read."""
    model_id, fingerprint, dtype, total, _ = _identity(model)
    layers = total if num_layers is None else num_layers

    def held(request: RecordRequest) -> Path | None:
        fields = record_fields(fingerprint, dtype, layers, calibrate, request)
        return next((path for f in ([fields, {**fields, "layers": total}] if layers < total else [fields])
                     if (path := store.held_path(model_id, f)) is not None), None)

    # one record per key: an invariant prompt's orders (and a detection query's positive slots) are one record
    return CacheStatus.collect(list(dict.fromkeys(r.canonical() for r in requests)), held, header_seconds, timings)
