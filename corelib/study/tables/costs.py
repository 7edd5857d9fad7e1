"""Measured costs: the pruned forward per model (cached) and a practitioner's per-query latency."""

from __future__ import annotations

import json
import logging
import time
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch

from ...prompts import build_prompt, prompt_order
from ...storage import atomic_write_text, cache_root
from ..profiles import kept_layers
from .schema import columns, digest, write
from .table1 import nq_wide

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from ..core import Study


def pruning_cost(study: "Study", tokens: int | None = None, repeats: int = 3) -> pd.DataFrame:
    """Measured cost of extraction on the pruned model at each pruned share, and of the unpruned
    model that exits after the deepest top-k CoRe head, for every model of the profile
    (``model_pruning_cost``: cached per model, so a stopped run keeps the models it timed)."""
    frames = [model_pruning_cost(study, m, tokens, repeats) for m in study.p.models]
    return write(study, "pruning_cost", pd.concat(frames, ignore_index=True))


def model_pruning_cost(study: "Study", m: str, tokens: int | None = None, repeats: int = 3) -> pd.DataFrame:
    """One model's pruning cost. Each configuration runs in its own process (``bench.measure``:
    median of ``repeats`` after a warm-up; peak memory above the process's baseline, or peak GPU
    allocation) on one real prompt of about ``tokens`` tokens (default: the length of the
    profile's first prompt). Ratios are to the unpruned model in the same call. The rows are
    cached under ``$CORELIB_CACHE/timings``, keyed by everything that sets them (model, prompt
    length, repeats, pruned shares, exit layer, device, threads, CPU, torch version), and carry
    the time they were measured; delete that folder to measure again."""
    from ..timing import busy_cpu_share, machine_key, measure

    spec = study.spec(m)
    total = spec.num_layers
    exit_layers = max(l for l, _ in study.heads(m, "core")) + 1
    n_tokens = tokens
    if n_tokens is None:
        lm, c = study.model(m), study.collection(study.p.collections[0])
        cand = study.candidates(m, study.p.collections[0])
        q = next(iter(cand.ranking))
        docs = prompt_order([c.document(d, study.p.words) for d in cand.ranking[q]])
        n_tokens = len(build_prompt(lm.tokenizer, c.queries[q], docs, lm.prefix, lm.suffix).input_ids)
    dtype = study.p.dtype_for(m)  # timed in the dtype the model's records are computed in
    key = {"model": m, "tokens": n_tokens, "repeats": repeats, "pruned shares": list(study.p.prune_levels),
           "exit layers": exit_layers, **machine_key(), **({"dtype": dtype} if dtype else {})}
    cache = cache_root() / "timings" / "pruning_cost" / f"{m}-{digest(key)}.json"
    if cache.is_file():
        log.info("pruning cost of %s: cached (%s)", m, cache)
        return pd.DataFrame(json.loads(cache.read_text())["rows"])
    busy = busy_cpu_share()
    if not torch.cuda.is_available() and busy > 0.25:
        log.warning("%.0f%% of the CPU is busy with other processes before timing %s: the latency ratios "
                    "will be noisy; stop them (e.g. a `make warm` job) for clean numbers", 100 * busy, m)
    rows = []
    for share in study.p.prune_levels:
        kept = kept_layers(total, share)
        row = (measure(m, "pruned", n_tokens, repeats, study.data, layers=kept, dtype=dtype) if kept < total
               else measure(m, "b", n_tokens, repeats, study.data, dtype=dtype))
        rows.append({**row, "pruned share": share, "kept layers": kept, "run": "pruned"})
    rows.append({**measure(m, "eexit", n_tokens, repeats, study.data, layers=exit_layers, dtype=dtype),
                 "pruned share": 0.0, "kept layers": total, "run": f"early exit after layer {exit_layers - 1}"})
    errors = [r["error"] for r in rows if "error" in r]
    if errors:
        raise RuntimeError(f"pruning cost of {m} not measured: {errors[0]}")
    df = pd.DataFrame(rows).rename(columns={"model_and_run_mb": "model and run MB"})
    base = df[(df.run == "pruned") & (df["kept layers"] == total)].iloc[0]
    df["latency ratio"] = df.seconds / base.seconds
    df["memory ratio"] = df["model and run MB"] / base["model and run MB"]
    df["measured"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    df = df[columns("pruning_cost")]
    # a killed run leaves no half-written cache file
    atomic_write_text(cache, json.dumps({"key": key, "busy cpu share before": busy, "rows": df.to_dict("records")}, indent=1))
    return df


def practitioner_cost(study: "Study", pq: pd.DataFrame, queries: int = 10) -> pd.DataFrame:
    """Per-query latency of the bi-encoder re-ranker (cold: encoding the query and its candidates;
    warm: the candidates' embeddings precomputed, as from an indexed corpus), ICR / CoRe-R (one calibrated forward over all layers)
    and CoRe-R with the early exit after its deepest head, timed side by side in this process on
    the first ``queries`` queries of the profile's first collection, as ratios to the cold
    bi-encoder; nDCG@10 is each method's mean over collections from the per-query table."""
    from ...dense import document_texts
    from ...records import build_record
    from ..timing import busy_cpu_share, timed

    m, c = study.p.models[0], study.p.collections[0]
    coll, cand, enc = study.collection(c), study.candidates(m, c), study.encoder()
    timed_queries = list(cand.ranking)[:queries]
    # the warm bi-encoder's precomputed document embeddings (not timed): the candidates of the timed queries
    ids = list(dict.fromkeys(d for q in timed_queries for d in cand.ranking[q]))
    emb, row = enc.encode(document_texts(coll, ids, study.p.words)), {d: i for i, d in enumerate(ids)}
    lm = study.model(m)
    exit_layers = max(l for l, _ in study.heads(m, "core")) + 1
    window_exit = study.layer_window(m)[1] + 1  # the layer window reads no layer past its last
    cuda = lm.device.type == "cuda"
    if not cuda and busy_cpu_share() > 0.25:
        log.warning("the CPU is busy with other processes: the practitioner cost timings will be noisy")
    times: dict[str, list[float]] = {}
    for q in timed_queries:
        query, docs = coll.queries[q], cand.ranking[q]
        texts = document_texts(coll, docs, study.p.words)
        prompt_docs = prompt_order([coll.document(d, study.p.words) for d in docs])
        runs = {
            "Bi-encoder (cold)": lambda: enc.encode([query] + texts),
            "Bi-encoder (warm)": lambda: enc.encode([query]) @ emb[[row[d] for d in docs]].T,
            "ICR / CoRe-R (all layers)": lambda: build_record(lm, query, prompt_docs, words=study.p.words),
            f"CoRe-R, early exit after layer {exit_layers - 1}":
                lambda: build_record(lm, query, prompt_docs, num_layers=exit_layers, words=study.p.words),
            f"Layer window, early exit after layer {window_exit - 1}":
                lambda: build_record(lm, query, prompt_docs, num_layers=window_exit, words=study.p.words),
        }
        for name, fn in runs.items():
            times.setdefault(name, []).append(timed(fn, cuda))
    means = nq_wide(pq).groupby(level=["model", "collection"]).mean().groupby(level="model").mean()
    ndcg = {"Bi-encoder (cold)": "Bi-encoder", "Bi-encoder (warm)": "Bi-encoder", "ICR / CoRe-R (all layers)": "ICR"}
    base = float(np.median(times["Bi-encoder (cold)"]))
    device = f"{lm.device.type}, {torch.get_num_threads()} threads" if not cuda else torch.cuda.get_device_name()
    rows = []
    for name, t in times.items():
        method = ndcg.get(name, "Layer window" if name.startswith("Layer window") else "CoRe-R")
        rows.append({"model": m, "collection": c, "method": name, "queries timed": len(t),
                     "seconds per query": float(np.median(t)), "ratio to bi-encoder (cold)": float(np.median(t)) / base,
                     "nDCG@10 (mean over collections)": float(means.loc[m, method]), "device": device})
    rows.insert(3, {**rows[2], "method": "(CoRe-R with all layers: the same forward as ICR)",
                    "nDCG@10 (mean over collections)": float(means.loc[m, "CoRe-R"])})
    return write(study, "practitioner_cost", pd.DataFrame(rows))
