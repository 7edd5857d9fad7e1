"""The reproduction study's settings (profiles) and the steps the notebooks share.

Every step caches its attention records on disk (RecordStore), so a notebook that is stopped
resumes where it was, and sweeps over heads or temperatures never run the model again.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path

import pandas as pd
import torch

from .data import Collection, first_stage, load_collection, load_detection, sample_queries
from .evaluate import evaluate_run
from .heads import HeadScores, detect_heads
from .models import DEFAULT_MODEL, LoadedModel, ModelSpec, model_spec
from .records import QueryRecord, RecordStore
from .rerank import Reranker, detection_records
from .scoring import cumulative_doc_scores, record_run

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Profile:
    """Sizes of one reproduction run. Fixed before any test number was looked at."""

    name: str
    models: tuple[str, ...]
    collections: tuple[str, ...]
    top_k: int
    words: int
    queries: int | None  # sampled test queries per collection and model (None = all judged test queries)
    detection_samples: int
    negatives: int
    positions: int
    temperature: float  # CoRe temperature used for head selection
    num_heads: int = 8
    prune_levels: tuple[float, ...] = (0.0, 0.3, 0.4, 0.5, 0.6, 0.7)
    multilingual: tuple[str, ...] = ()
    ablation_models: tuple[str, ...] | None = None  # None = all models
    seed: int = 0
    queries_by_model: tuple[tuple[str, int | None], ...] = ()  # (model, queries) overriding ``queries``
    multilingual_queries: tuple[tuple[str, int | None], ...] = ()  # (model, queries) on the multilingual sets

    @property
    def models_for_ablations(self) -> tuple[str, ...]:
        return self.ablation_models or self.models

    def queries_for(self, model: str, collection: str | None = None) -> int | None:
        """Sampled queries per collection for a model (the multilingual sets have their own sizes)."""
        table = self.multilingual_queries if collection in self.multilingual else self.queries_by_model
        return dict(table).get(model, self.queries)

    def sizes(self, model: str | None = None) -> str:
        q = self.queries_for(model) if model else self.queries
        return (f"top-{self.top_k} BM25 candidates, {self.words} words/doc, {q or 'all'} queries/collection; "
                f"detection {self.detection_samples} NQ queries x {self.positions} positions, {self.negatives} negatives, "
                f"t={self.temperature}")


PROFILES: dict[str, Profile] = {
    "smoke": Profile("smoke", (DEFAULT_MODEL,), ("scifact", "cranfield"), top_k=8, words=40, queries=4,
                     detection_samples=4, negatives=7, positions=2, temperature=0.001,
                     prune_levels=(0.0, 0.5), multilingual=("xquad-r/de",)),
    # Issue 11: every judged test query up to 300 per collection (~1,060 per model) for the two
    # smallest models, so that a 0.75-point difference is detectable; qwen keeps 30 per collection.
    "cpu": Profile("cpu", (DEFAULT_MODEL, "gemma3-270m", "qwen2.5-coder-0.5b"),
                   ("scifact", "arguana", "cranfield", "cisi", "med", "npl", "lisa"), top_k=20, words=100,
                   queries=30, detection_samples=100, negatives=19, positions=2,
                   temperature=0.001, multilingual=("xquad-r/de", "xquad-r/en", "xquad-r/es"),
                   ablation_models=(DEFAULT_MODEL,),
                   queries_by_model=((DEFAULT_MODEL, 300), ("gemma3-270m", 300)),
                   multilingual_queries=((DEFAULT_MODEL, 50),)),
    "paper": Profile("paper", ("mistralai/Mistral-7B-Instruct-v0.2", "meta-llama/Llama-3.1-8B-Instruct",
                               "ibm-granite/granite-3.2-8b-instruct", "microsoft/phi-4"),
                     ("trec-covid", "nfcorpus", "dbpedia-entity", "scifact", "scidocs", "fiqa", "nq", "fever",
                      "climate-fever", "hotpotqa", "webis-touche2020", "msmarco", "quora", "arguana", "cqadupstack"),
                     top_k=40, words=300, queries=None, detection_samples=1000,
                     negatives=49, positions=5, temperature=0.001,
                     multilingual=tuple(f"mldr/{l}" for l in ("de", "en", "es", "fr", "it", "pt"))),
}


# The cpu profile restricted to the default model: its results are complete on their own and come
# first (the larger models take most of the cpu profile's time).
PROFILES["cpu-default"] = replace(PROFILES["cpu"], name="cpu-default", models=(DEFAULT_MODEL,))


def profile(name: str, **overrides) -> Profile:
    try:
        return replace(PROFILES[name], **overrides)
    except KeyError:
        raise ValueError(f"unknown profile {name!r}: use one of {sorted(PROFILES)}") from None


def output_dirs(p: Profile) -> tuple[Path, Path]:
    """results/<profile>/tables and figures/<profile>, created."""
    tables, figures = REPO / "results" / p.name / "tables", REPO / "figures" / p.name
    tables.mkdir(parents=True, exist_ok=True)
    figures.mkdir(parents=True, exist_ok=True)
    return tables, figures


def heads_dir(p: Profile) -> Path:
    """Where detected head sets go: results/heads (the CLI's default) for the cpu profiles, else results/<profile>/heads."""
    return REPO / "results" / ("heads" if p.name.startswith("cpu") else f"{p.name}/heads")


@lru_cache(maxsize=None)
def spec(name: str) -> ModelSpec:
    """A model's identity (record keys need no loaded model); ``spec(name).load()`` loads it once."""
    return model_spec(name)


def model(name: str) -> LoadedModel:
    """The loaded model (loaded on first use, then kept)."""
    return spec(name).load()


@lru_cache(maxsize=1)
def store() -> RecordStore:
    """The record store, with records kept in memory up to $CORELIB_RECORD_MEMORY_MB (default 4096)."""
    import os

    return RecordStore(memory_mb=float(os.environ.get("CORELIB_RECORD_MEMORY_MB", 4096)))


@lru_cache(maxsize=16)
def _collection(name: str, data) -> "Collection":
    """Each collection is read from disk once per session (notebooks ask for it many times)."""
    return load_collection(name, data)


def first_stage_run(model_name: str, collection: str, p: Profile, data=None):
    """The profile's query sample of a collection with its first-stage candidates, and the collection."""
    coll = _collection(collection, data)
    qids = sample_queries(coll, p.queries_for(model_name, collection), p.seed)
    return first_stage(coll, p.top_k, qids), coll


def collection_records(model_name: str, collection: str, p: Profile, data=None, calibrate: bool = True) -> list[QueryRecord]:
    """All-head records of the profile's query sample of a collection (cached on disk)."""
    cand, coll = first_stage_run(model_name, collection, p, data)
    rr = Reranker(spec(model_name), calibrate=calibrate, top_k=p.top_k, words=p.words, store=store())
    return rr.records(coll, cand, list(cand.ranking))


def detection(model_name: str, p: Profile, data=None, calibrate: bool = False) -> list[QueryRecord]:
    samples = load_detection(data, p.detection_samples, p.negatives, p.positions, words=p.words, seed=p.seed)
    return detection_records(spec(model_name), samples, calibrate=calibrate, store=store())


def warm(p: Profile, models=None, data=None, multilingual: bool = True) -> None:
    """Compute and cache every record a profile's notebooks read, one model at a time: the detection
    set, then each collection, then the multilingual collections. Stopping and re-running resumes
    from the record cache; the notebooks then run without long forwards."""
    for m in models or p.models:
        # the smallest collections first, so that whole collections are done early
        sizes = {c: len(first_stage_run(m, c, p, data)[0].ranking) for c in p.collections}
        steps = [("detection", None)] + [("collection", c) for c in sorted(p.collections, key=sizes.get)]
        steps += [("collection", c) for c in p.multilingual] if multilingual else []
        for kind, name in steps:
            t0 = time.perf_counter()
            n = len(detection(m, p, data) if kind == "detection" else collection_records(m, name, p, data))
            log.info("%s %s: %d records (%.0f s)", m, name or kind, n, time.perf_counter() - t0)


def head_scores(records, method: str, p: Profile, model_name: str, temperature: float | None = None,
                calibrated: bool = False) -> HeadScores:
    t = p.temperature if temperature is None else temperature
    return detect_heads(records, method, temperature=t, calibrated=calibrated, model_id=model_name,
                        provenance={"data": "nq-open-detection", "words": p.words, "profile": p.name})


def restrict_layers(scores: HeadScores, num_layers: int) -> HeadScores:
    """Head scores with layers >= num_layers excluded (heads re-selected among kept layers)."""
    s = scores.scores.clone()
    s[num_layers:] = float("-inf")
    return HeadScores(s, scores.model_id, scores.method, {**scores.provenance, "kept_layers": num_layers})


def kept_layers(total: int, prune: float) -> int:
    return max(1, math.ceil(round(total * (1 - prune), 6)))


def ndcg(run, qrels) -> float:
    return evaluate_run(run, qrels)["ndcg@10"]


def sweep(records: list[QueryRecord], order, qrels, max_heads: int | None = None) -> pd.Series:
    """nDCG@10 using the first k heads of ``order``, for k = 1..K (one pass over cached records,
    one ranx kernel call for all K)."""
    from .evaluate import mean_ndcg_rows

    order = order[:max_heads] if max_heads else order
    scored = [(r.query_id, r.doc_ids, cumulative_doc_scores(r, order).numpy()) for r in records]
    curve = mean_ndcg_rows(scored, qrels)
    return pd.Series(curve, index=pd.RangeIndex(1, len(order) + 1, name="heads"), name="ndcg@10")


def pruning_cost(model_name: str, p: Profile, exit_layers: int, data=None, tokens: int | None = None,
                 repeats: int = 3) -> pd.DataFrame:
    """Measured cost of extraction on the pruned model at each of the profile's pruned shares, and of
    the unpruned model that exits after ``exit_layers`` layers (the deepest selected head).

    Each configuration runs in its own process (``corelib.bench.measure``: median of ``repeats``
    after a warm-up; peak memory above the process's baseline, or peak GPU allocation) on the
    same real prompt of about ``tokens`` tokens (default: the length of the profile's first
    prompt). Ratios are to the unpruned model measured in the same call.
    """
    from .bench import busy_cpu_share, measure
    from .prompts import build_prompt, prompt_order

    if tokens is None:
        cand, coll = first_stage_run(model_name, p.collections[0], p, data)
        q = next(iter(cand.ranking))
        lm = model(model_name)
        docs = prompt_order([coll.document(d, p.words) for d in cand.ranking[q]])
        tokens = len(build_prompt(lm.tokenizer, coll.queries[q], docs, lm.prefix, lm.suffix).input_ids)
    total = model(model_name).num_layers
    busy = busy_cpu_share()
    if not torch.cuda.is_available() and busy > 0.25:
        log.warning("%.0f%% of the CPU is busy with other processes before timing %s: the latency ratios "
                    "will be noisy; stop them (e.g. a `make warm` job) for clean numbers", 100 * busy, model_name)
    rows = []
    for share in p.prune_levels:
        kept = kept_layers(total, share)
        row = measure(model_name, "pruned", tokens, repeats, data, layers=kept) if kept < total else \
            measure(model_name, "b", tokens, repeats, data)
        rows.append({**row, "pruned_share": share, "kept layers": kept, "run": "pruned"})
    rows.append({**measure(model_name, "eexit", tokens, repeats, data, layers=exit_layers),
                 "pruned_share": 0.0, "kept layers": total, "run": f"early exit after layer {exit_layers - 1}"})
    errors = [r["error"] for r in rows if "error" in r]
    if errors:
        raise RuntimeError(f"pruning cost of {model_name} not measured: {errors[0]}")
    df = pd.DataFrame(rows)
    base = df[(df.run == "pruned") & (df["kept layers"] == total)].iloc[0]
    df["latency_ratio"] = df.seconds / base.seconds
    df["memory_ratio"] = df.model_and_run_mb / base.model_and_run_mb
    return df[["model", "run", "pruned_share", "kept layers", "tokens", "seconds", "model_and_run_mb",
               "latency_ratio", "memory_ratio", "device"]]


def rerank_table(p: Profile, collections, data=None, num_heads: int | None = None,
                 temperature: float | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """nDCG@10 of BM25, ICR, QR-R and CoRe-R per model and collection, with paired t-test p-values
    (ranx) of CoRe-R against ICR and QR-R; and the per-query nDCG@10 of every method."""
    from .evaluate import p_values, per_query
    from .scoring import record_run

    k = num_heads or p.num_heads
    rows, per_q = [], []
    for m in p.models:
        det = detection(m, p, data)
        core = head_scores(det, "core", p, m, temperature=temperature).head_set(k).heads
        qr = head_scores(det, "qr", p, m).head_set(k).heads
        for name in collections:
            cand, coll = first_stage_run(m, name, p, data)
            recs = collection_records(m, name, p, data)
            runs = {"BM25": cand.run(), "ICR": record_run(recs), "QR-R": record_run(recs, qr),
                    "CoRe-R": record_run(recs, core)}
            row = {"model": m, "collection": name, "queries": len(recs)}
            row.update({method: ndcg(run, coll.qrels) for method, run in runs.items()})
            pv = p_values(runs, coll.qrels, against="CoRe-R")
            row.update({"p CoRe-R vs ICR": pv["ICR"], "p CoRe-R vs QR-R": pv["QR-R"]})
            rows.append(row)
            scores = pd.DataFrame({method: per_query(run, coll.qrels) for method, run in runs.items()})
            per_q.append(scores.rename_axis("query").reset_index().assign(model=m, collection=name))
    return pd.DataFrame(rows), pd.concat(per_q, ignore_index=True)


METHODS = ("BM25", "ICR", "QR-R", "CoRe-R")


def method_means(table: pd.DataFrame) -> pd.DataFrame:
    """Per model, the unweighted mean nDCG@10 of each method over the table's collections."""
    avg = table.groupby("model")[list(METHODS)].mean()
    avg["collections"] = table.groupby("model").size()
    return avg


def with_negatives(records: list[QueryRecord], m: int) -> list[QueryRecord]:
    """Detection records whose contrast keeps the positive and only the first m negatives (prompt order)."""
    out = []
    for r in records:
        keep = [r.positive] + [i for i in range(len(r.doc_ids)) if i != r.positive][:m]
        idx = torch.tensor(keep)
        out.append(replace(r, doc_ids=[r.doc_ids[i] for i in keep], doc_mass=r.doc_mass[..., idx],
                           doc_mass_na=None if r.doc_mass_na is None else r.doc_mass_na[..., idx], positive=0))
    return out


def length_bias(records: list[QueryRecord], heads=None) -> dict:
    """Does a method favour long documents? Mean within-query Spearman correlation of score and
    document length (tokens), and the length of the top-ranked document over the mean candidate length."""
    from .scoring import doc_scores

    rhos, ratios = [], []
    for r in records:
        lengths = r.doc_lengths.double()
        s = doc_scores(r, heads).double()
        if lengths.std() > 0 and s.std() > 0:
            rhos.append(pd.Series(s.numpy()).corr(pd.Series(lengths.numpy()), method="spearman"))
        ratios.append(float(lengths[s.argmax()] / lengths.mean()))
    return {"spearman(score, length)": sum(rhos) / max(1, len(rhos)), "top-1 length / mean length": sum(ratios) / len(ratios)}
