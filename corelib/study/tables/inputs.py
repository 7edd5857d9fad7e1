"""The study's inputs: the collections and the prompts' lengths."""

from __future__ import annotations

import pandas as pd
from typing import TYPE_CHECKING

from ...evaluate import evaluate_run
from ...prompts import build_prompt, prompt_order
from .schema import write

if TYPE_CHECKING:
    from ..core import Study


def collections(study: "Study") -> pd.DataFrame:
    from ...data import choose_run_file, read_trec_run

    rows = []
    for name in study.p.collections + study.p.multilingual:
        c = study.collection(name)
        run_file = choose_run_file(c)
        full = evaluate_run({q: dict(d) for q, d in read_trec_run(run_file).items()}, c.qrels)["ndcg@10"] \
            if run_file else float("nan")
        rows.append({"collection": name, "documents": len(c.corpus), "judged queries": len(c.qrels),
                     "first stage": run_file.name if run_file else "BM25 (bm25s) over the corpus",
                     "BM25 nDCG@10 (all queries)": full})
    return write(study, "collections", pd.DataFrame(rows))


def prompt_lengths(study: "Study", per_collection: int = 5) -> pd.DataFrame:
    rows = []
    for m in study.p.models:
        lm = study.model(m)
        for name in study.p.collections + study.p.multilingual:
            cand, c = study.candidates(m, name), study.collection(name)
            for q in list(cand.ranking)[:per_collection]:
                docs = prompt_order([c.document(d, study.p.words) for d in cand.ranking[q]])
                pr = build_prompt(lm.tokenizer, c.queries[q], docs, lm.prefix, lm.suffix)
                rows.append({"model": m, "layers": lm.num_layers, "heads per layer": lm.num_heads,
                             "kv heads": lm.num_kv_heads, "collection": name, "tokens": pr.full_length})
    df = pd.DataFrame(rows).groupby(["model", "layers", "heads per layer", "kv heads", "collection"], sort=False)["tokens"]
    out = df.agg(["mean", "max"]).round(0).reset_index().rename(columns={"mean": "mean tokens", "max": "max tokens"})
    return write(study, "prompt_lengths", out)
