"""Every table of the study: its columns (defined once, here), how it is computed, where it is written.

``Tables(study).NAME(...)`` computes a table from cached records, writes ``<NAME>.csv`` to the
study's tables folder and returns it; ``Tables.read(NAME)`` reads it back with the same columns
(the report uses that). Per-query results live in one long table (``per_query``), so a new method,
model, head source or first stage adds rows, not columns.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import math
import random
import time
from dataclasses import asdict
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch

from ..evaluate import evaluate_run, ndcg_rows, per_query
from ..heads import in_domain_samples
from ..storage import atomic_write_text, cache_root
from ..prompts import build_prompt, prompt_order
from ..records import QueryRecord
from ..scoring import cumulative_doc_scores, filtered_doc_sum, head_index, record_run
from . import analysis
from .core import DETECTED, NIAH_SOURCE
from .profiles import kept_layers

if TYPE_CHECKING:
    from .core import Study

log = logging.getLogger(__name__)

# BM25 and Dense: first stages (nDCG@10 of their own top-k for the same queries); Bi-encoder: the profile's
# encoder re-ranking the same candidates as the LLM methods. NIAH-R: NaN where a model has none (too few needles).
METHODS = ("BM25", "Dense", "Bi-encoder", "ICR", "QR-R", "CoRe-R", "NIAH-R")
FIRST_STAGE_METHODS = {"bm25": "BM25", "dense": "Dense"}
HEAD_METHODS = DETECTED  # methods whose heads come from a detection source (NQ or in-domain); NIAH-R's from needles

COLUMNS: dict[str, tuple[str, ...]] = {
    "collections": ("collection", "documents", "judged queries", "first stage", "BM25 nDCG@10 (all queries)"),
    "prompt_lengths": ("model", "layers", "heads per layer", "kv heads", "collection", "mean tokens", "max tokens"),
    "top_heads": ("model", "method", "head source", "rank", "layer", "head", "score", "relative depth"),
    "niah_detection": ("model", "haystack", "needles", "context lengths", "depths", "trials", "counted",
                       "counted share", "mean recall", "decode tokens (max)", "heads above 0", "ties broken by",
                       "decode seconds"),
    "overlap": ("model", "head source", "k", "CoRe and QR share", "CoRe and NIAH share", "QR and NIAH share"),
    "detection_temperature": ("model", "temperature", "top-k shared with the profile's t", "spearman vs the profile's t",
                              "best head"),
    "per_query": ("model", "first stage", "collection", "query_id", "method", "head source", "k", "ndcg@10"),
    "table1": ("model", "first stage", "collection", "queries", *METHODS, "CoRe-R - ICR", "CoRe-R - QR-R",
               "CoRe-R - NIAH-R", "CoRe-R - Bi-encoder"),
    "table1_average": ("model", "first stage", "collections", "queries", *METHODS),
    "table2": ("model", "first stage", "collection", "data", "queries", *METHODS, "CoRe-R - ICR", "CoRe-R - QR-R",
               "CoRe-R - NIAH-R", "CoRe-R - Bi-encoder"),
    "table2_average": ("model", "first stage", "collections", "queries", *METHODS),
    # "p inferior"/"p holm inferior": margin claims only (the one-sided test of loss <= margin, which can
    # contradict them); empty for the others
    "comparisons": ("claim", "model", "a", "b", "head source", "difference", "ci low", "ci high", "p", "p holm",
                    "p inferior", "p holm inferior", "detectable (80% power)", "queries", "collections", "verdict"),
    "in_domain_sources": ("model", "head source", "CoRe and QR share", "CoRe-R", "QR-R", "ICR", "CoRe-R - QR-R",
                          "CoRe-R - ICR"),
    "positive_slots": ("collection", "model", "slot", "positives"),
    "controls": ("model", "control", "sets", "median", "p5", "p95"),
    "control_positions": ("model", "control", "method", "ndcg@10", "percentile", "p better", "p worse", "verdict"),
    "sweep": ("model", "collection", "order", "heads", "ndcg@10"),
    "sweep_peaks": ("model", "collection", "order", "peak ndcg@10", "heads at peak", "1 head", "8 heads", "ICR"),
    "depth": ("model", "layers", "top heads", "top layers", "in middle third", "median relative depth", "p more",
              "p fewer", "p more holm", "p fewer holm", "verdict", "global-attention layers", "top heads in global layers"),
    "pruning": ("model", "method", "pruned share", "kept layers", "ndcg@10", "deepest head"),
    "practitioner_cost": ("model", "collection", "method", "queries timed", "seconds per query", "ratio to bi-encoder (cold)",
                          "nDCG@10 (mean over collections)", "device"),
    "pruning_cost": ("model", "run", "pruned share", "kept layers", "tokens", "seconds", "model and run MB",
                     "latency ratio", "memory ratio", "device", "measured"),
    "ablation_temperature": ("model", "temperature", "CoRe-R nDCG@10"),
    "ablation_calibrated_detection": ("model", "method", "calibrated detection", "nDCG@10"),
    "ablation_negatives_positions": ("model", "ablation", "nDCG@10"),
    "ablation_length_bias": ("model", "collection", "method", "spearman(score, length)", "top-1 length / mean length"),
    "order_per_query": ("model", "collection", "query_id", "order", "method", "ndcg@10", "kendall tau vs BM25"),
    "order_agreement": ("model", "order", "method", "queries", "mean ndcg@10", "correlation with BM25 (per-query ndcg@10)",
                        "kendall tau vs BM25 (mean)"),
    "forest": ("claim", "model", "collection", "difference", "ci low", "ci high", "queries"),
    "leave_one_out": ("claim", "model", "left out", "difference", "ci low", "ci high", "p", "queries", "collections"),
    "first_stage_agreement": ("model", "method", "queries", "correlation with BM25 (per-query ndcg@10)"),
    "released_depth": ("model", "source", "layers", "top heads", "top layers", "in middle third", "median relative depth",
                       "p more", "p fewer", "p more holm", "p fewer holm", "verdict"),
    "released_pruning": ("model", "source", "pruned share", "kept layers", "layers", "unpruned top heads in kept layers",
                         "re-detected top heads shared with unpruned", "top heads", "deepest top layer",
                         "top-k share of all heads (%)"),
    "verdicts": ("claim", "model", "paper", "ours", "verdict", "brief"),
    "scaling": ("model", "parameters", "family", "tuning", "weights", "queries", "BM25", "ICR", "QR-R", "CoRe-R",
                "NIAH-R", "random 8 heads (median)", "CoRe-R - ICR", "CoRe-R - ICR ci low", "CoRe-R - ICR ci high",
                "CoRe-R - QR-R", "CoRe-R - QR-R ci low", "CoRe-R - QR-R ci high", "top CoRe heads: median relative depth", "CoRe-R kept at 50% pruning"),
}


# Columns added after tables were committed: an older table without them reads them as empty
LATER_COLUMNS = {"comparisons": ("p inferior", "p holm inferior"), "pruning_cost": ("measured",)}


def _with_later_columns(df: pd.DataFrame, base: str) -> pd.DataFrame:
    for c in LATER_COLUMNS.get(base, ()):
        if c not in df:
            df[c] = np.nan
    return df


def _mean_over_collections(df: pd.DataFrame, value: str = "ndcg@10") -> float:
    return float(df.groupby("collection")[value].mean().mean())


def _digest(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]


class Tables:
    def __init__(self, study: "Study"):
        self.s = study
        self.p = study.p
        self.ablations = Ablations(self)

    # ---------------------------------------------------------------- io
    @staticmethod
    def base_table(name: str) -> str:
        """``comparisons_*`` and ``per_query_*`` tables share their base table's columns."""
        return next((base for base in ("comparisons", "per_query") if name.startswith(base + "_")), name)

    @classmethod
    def columns(cls, name: str) -> list[str]:
        return list(COLUMNS[cls.base_table(name)])

    def write(self, name: str, df: pd.DataFrame) -> pd.DataFrame:
        cols = self.columns(name)
        missing = [c for c in cols if c not in df.columns]
        if missing:
            raise ValueError(f"table {name} lacks columns {missing}")
        df = df[cols].reset_index(drop=True)
        self.s.tables_dir.mkdir(parents=True, exist_ok=True)
        df.to_csv(self.s.tables_dir / f"{name}.csv", index=False)
        return df

    def read(self, name: str) -> pd.DataFrame | None:
        path = self.s.tables_dir / f"{name}.csv"
        if not path.is_file():
            return None
        return _with_later_columns(pd.read_csv(path), self.base_table(name))[self.columns(name)]

    # ---------------------------------------------------------------- data
    def collections(self) -> pd.DataFrame:
        from ..data import choose_run_file, read_trec_run

        rows = []
        for name in self.p.collections + self.p.multilingual:
            c = self.s.collection(name)
            run_file = choose_run_file(c)
            full = evaluate_run({q: dict(d) for q, d in read_trec_run(run_file).items()}, c.qrels)["ndcg@10"] \
                if run_file else float("nan")
            rows.append({"collection": name, "documents": len(c.corpus), "judged queries": len(c.qrels),
                         "first stage": run_file.name if run_file else "BM25 (bm25s) over the corpus",
                         "BM25 nDCG@10 (all queries)": full})
        return self.write("collections", pd.DataFrame(rows))

    def prompt_lengths(self, per_collection: int = 5) -> pd.DataFrame:
        rows = []
        for m in self.p.models:
            lm = self.s.model(m)
            for name in self.p.collections + self.p.multilingual:
                cand, c = self.s.candidates(m, name), self.s.collection(name)
                for q in list(cand.ranking)[:per_collection]:
                    docs = prompt_order([c.document(d, self.p.words) for d in cand.ranking[q]])
                    pr = build_prompt(lm.tokenizer, c.queries[q], docs, lm.prefix, lm.suffix)
                    rows.append({"model": m, "layers": lm.num_layers, "heads per layer": lm.num_heads,
                                 "kv heads": lm.num_kv_heads, "collection": name, "tokens": pr.full_length})
        df = pd.DataFrame(rows).groupby(["model", "layers", "heads per layer", "kv heads", "collection"], sort=False)["tokens"]
        out = df.agg(["mean", "max"]).round(0).reset_index().rename(columns={"mean": "mean tokens", "max": "max tokens"})
        return self.write("prompt_lengths", out)

    # ---------------------------------------------------------------- heads
    def top_heads(self, k: int | None = None, temperature: float | None = None) -> pd.DataFrame:
        k = k or self.p.num_heads
        rows = []
        for m in self.p.models:
            for method in self.s.head_methods(m).values():
                t = self.s.head_scores(m, method, temperature).table().head(k)
                rows.append(t.assign(model=m, method=method, **{"head source": NIAH_SOURCE if method == "niah" else "nq"}))
        df = pd.concat(rows).rename(columns={"relative_depth": "relative depth"})
        return self.write("top_heads", df)

    def niah_detection(self) -> pd.DataFrame:
        """NIAH-R's detection per model: the grid, how many trials retrieved the needle (and so
        count), how many heads ever copied, and the decoding time the trials took."""
        from ..niah import MIN_RECALL

        p, rows = self.p, []
        for m in self.p.models:
            trials = self.s.niah_trials(m)
            counted = [r for r in trials if r.counted()]
            rows.append({"model": m, "haystack": p.niah_haystack, "needles": p.niah_needles,
                         "context lengths": list(p.niah_lengths), "depths": list(p.niah_depths), "trials": len(trials),
                         "counted": len(counted), "counted share": len(counted) / len(trials),
                         "mean recall": float(np.mean([r.recall for r in trials])),
                         "decode tokens (max)": max(r.steps for r in trials),
                         "heads above 0": int((torch.stack([r.hits for r in counted]).mean(0) > 0).sum()) if counted else 0,
                         "ties broken by": f"mean attention on the needle (counted: ROUGE-1 recall > {MIN_RECALL})",
                         "decode seconds": float(sum(r.seconds for r in trials))})
        return self.write("niah_detection", pd.DataFrame(rows))

    def overlap(self, k: int | None = None, temperature: float | None = None, sources=("nq",)) -> pd.DataFrame:
        """Top-k heads that CoRe, QR and NIAH share (NIAH: from its needle trials, whatever the source)."""
        k = k or self.p.num_heads
        rows = []
        for m in self.p.models:
            niah = set(self.s.heads(m, "niah", k)) if "NIAH-R" in self.s.head_methods(m) else None
            for src in sources:
                excl = [None] if src == "nq" else list(self.p.collections)
                sets = [(set(self.s.heads(m, "core", k, temperature, src, e)), set(self.s.heads(m, "qr", k, temperature, src, e)))
                        for e in excl]
                nan = float("nan")
                rows.append({"model": m, "head source": src if src == "nq" else f"{src} (mean over held-out collections)",
                             "k": k, "CoRe and QR share": float(np.mean([len(c & q) for c, q in sets])),
                             "CoRe and NIAH share": float(np.mean([len(c & niah) for c, _ in sets])) if niah else nan,
                             "QR and NIAH share": float(np.mean([len(q & niah) for _, q in sets])) if niah else nan})
        return self.write("overlap", pd.DataFrame(rows))

    def detection_temperature(self, k: int | None = None, temperatures=(1e-4, 1e-3, 1e-2, 1e-1, 1.0)) -> pd.DataFrame:
        k = k or self.p.num_heads
        rows = []
        for m in self.p.models:
            ref = self.s.head_scores(m, "core")
            for t in temperatures:
                s = self.s.head_scores(m, "core", t)
                rho = pd.Series(s.scores.flatten().numpy()).corr(pd.Series(ref.scores.flatten().numpy()), method="spearman")
                rows.append({"model": m, "temperature": t,
                             "top-k shared with the profile's t": len(set(s.order()[:k]) & set(ref.order()[:k])),
                             "spearman vs the profile's t": round(rho, 3), "best head": s.order()[0]})
        return self.write("detection_temperature", pd.DataFrame(rows))

    # ---------------------------------------------------------------- re-ranking
    def _method_runs(self, m: str, collection: str, k: int, temperature, sources) -> list[tuple[str, str, int, dict]]:
        recs = self.s.records(m, collection)
        spec = self.s.spec(m)
        out = [(label, "", 0, self.s.candidates(m, collection, stage).run()) for stage, label in FIRST_STAGE_METHODS.items()]
        out += [("Bi-encoder", "", 0, self.s.bi_encoder_run(m, collection)),
                ("ICR", "all", spec.num_layers * spec.num_heads, record_run(recs))]
        for src in sources:
            exclude = collection if src.startswith("in-domain") else None
            for method, key in HEAD_METHODS.items():
                heads = self.s.heads(m, key, k, temperature, src, exclude)
                out.append((method, src, k, record_run(recs, heads)))
        if "NIAH-R" in self.s.head_methods(m):
            out.append(("NIAH-R", NIAH_SOURCE, k, record_run(recs, self.s.heads(m, "niah", k))))
        return out

    def per_query(self, collections=None, k: int | None = None, temperature: float | None = None,
                  sources=("nq",), write: bool = True, name: str = "per_query") -> pd.DataFrame:
        """nDCG@10 of every query, method and head source (the long table all comparisons read)."""
        k = k or self.p.num_heads
        collections = list(self.p.collections if collections is None else collections)
        if not collections:  # an empty list is not "the profile's collections": profile cpu-dense has no multilingual sets
            raise ValueError(f"no collections to evaluate for {name!r} in profile {self.p.name}: pass None for the "
                             "profile's collections, or use a profile that has this kind of collection")
        rows = []
        for m in self.p.models:
            for c in collections:
                qrels = self.s.collection(c).qrels
                srcs = [s for s in sources if not (s.startswith("in-domain") and c in self.p.multilingual)]
                for method, src, kk, run in self._method_runs(m, c, k, temperature, srcs):
                    pq = per_query(run, qrels)
                    rows.append(pd.DataFrame({"model": m, "first stage": self.p.first_stage, "collection": c,
                                              "query_id": pq.index.astype(str), "method": method, "head source": src,
                                              "k": kk, "ndcg@10": pq.values}))
        df = pd.concat(rows, ignore_index=True)
        return self.write(name, df) if write else df[list(COLUMNS["per_query"])]

    @staticmethod
    def _nq_wide(pq: pd.DataFrame) -> pd.DataFrame:
        sel = pq[pq["head source"].isin(["", "all", "nq", NIAH_SOURCE])]
        wide = sel.pivot_table(index=["model", "collection", "query_id"], columns="method", values="ndcg@10")
        return wide.reindex(columns=list(METHODS))  # a method no model has (NIAH-R without retrieved needles): NaN

    def table1(self, pq: pd.DataFrame, name: str = "table1") -> tuple[pd.DataFrame, pd.DataFrame]:
        """nDCG@10 per model and collection (NQ heads), and the per-model mean over collections."""
        wide = self._nq_wide(pq).reset_index()
        g = wide.groupby(["model", "collection"], sort=False)
        t = g[list(METHODS)].mean()
        t["queries"] = g.size()
        t["CoRe-R - ICR"] = 100 * (t["CoRe-R"] - t["ICR"])
        t["CoRe-R - QR-R"] = 100 * (t["CoRe-R"] - t["QR-R"])
        t["CoRe-R - NIAH-R"] = 100 * (t["CoRe-R"] - t["NIAH-R"])
        t["CoRe-R - Bi-encoder"] = 100 * (t["CoRe-R"] - t["Bi-encoder"])
        t["first stage"] = self.p.first_stage
        t = t.reset_index()
        if name == "table2":
            t["data"] = ["MLDR" if c.startswith("mldr/") else "XQuAD-R (stand-in for MLDR)" for c in t["collection"]]
        avg = t.groupby("model", sort=False)[list(METHODS)].mean()
        avg["collections"] = t.groupby("model", sort=False).size()
        avg["queries"] = t.groupby("model", sort=False)["queries"].sum()
        avg["first stage"] = self.p.first_stage
        return self.write(name, t), self.write(f"{name}_average", avg.reset_index())

    # ---------------------------------------------------------------- comparisons
    def compare(self, pq: pd.DataFrame, pairs, claim_prefix: str = "") -> pd.DataFrame:
        """Paired comparisons of method pairs per model and pooled (a query once), with CI, p,
        Holm-adjusted p within each claim's family and a verdict (analysis.RULES)."""
        rows = []
        for a, b, src in pairs:
            claim = f"{claim_prefix}{a} beats {b}" + (f" ({src} heads)" if src.startswith("in-domain") else "")
            sel = pq[pq["head source"].isin({"", "all", src, NIAH_SOURCE})]
            family = []
            models = list(dict.fromkeys(sel["model"]))
            for m in models + (["pooled (a query once)"] if len(models) > 1 else []):
                pool = m.startswith("pooled")
                part = sel if pool else sel[sel["model"] == m]
                if not {a, b} <= set(part["method"]):  # e.g. NIAH-R for a model that retrieved no needle
                    continue
                d = analysis.paired_differences(part, a, b, pool=pool)
                r = analysis.paired(d)
                family.append({"claim": claim, "model": m, "a": a, "b": b, "head source": src, "difference": r.estimate,
                               "ci low": r.ci_low, "ci high": r.ci_high, "p": r.p, "detectable (80% power)": r.mde,
                               "queries": r.queries, "collections": r.collections, "identical": r.identical})
            adj = analysis.holm([f["p"] for f in family])
            for f, ph in zip(family, adj):
                f["p holm"] = ph
                f["verdict"] = analysis.superiority_verdict(f["difference"], ph, f.pop("identical"))
            rows += family
        return pd.DataFrame(rows)

    def table1_pairs(self, sources=("nq",)) -> list[tuple[str, str, str]]:
        """The Table 1 analog's comparisons (analysis.RULES), as (a, b, head source) for ``compare``:
        CoRe-R against ICR, QR-R, NIAH-R and the bi-encoder; ICR and CoRe-R against the first stage
        whose candidates they re-rank (the profile's); with a dense first stage, dense against BM25
        (each its own top k for the same queries); CoRe-R against ICR and QR-R with every other head source."""
        first = FIRST_STAGE_METHODS[self.p.first_stage]
        pairs = [("CoRe-R", "ICR", "nq"), ("CoRe-R", "QR-R", "nq"), ("CoRe-R", "NIAH-R", "nq"),
                 ("CoRe-R", "Bi-encoder", "nq"), ("ICR", first, "all"), ("CoRe-R", first, "nq")]
        if first != "BM25":
            pairs.append((first, "BM25", ""))
        return pairs + [(a, b, src) for src in sources if src != "nq" for a, b in (("CoRe-R", "ICR"), ("CoRe-R", "QR-R"))]

    def comparisons(self, name: str, frames: list[pd.DataFrame]) -> pd.DataFrame:
        """Write comparison rows as the table ``comparisons_<name>`` (the report reads every one)."""
        return self.write(f"comparisons_{name}", _with_later_columns(pd.concat(frames, ignore_index=True), "comparisons"))

    # ---------------------------------------------------------------- in-domain detection
    def in_domain_sources(self, pq: pd.DataFrame, k: int | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Both detection sources side by side, and where the in-domain positives sit in the prompt."""
        k = k or self.p.num_heads
        rows = []
        for m in self.p.models:
            sub = pq[pq["model"] == m]
            for src in ("nq", "in-domain", "in-domain, position-matched"):
                if src == "nq":
                    shared = len(set(self.s.heads(m, "core", k)) & set(self.s.heads(m, "qr", k)))
                else:
                    shared = float(np.mean([len(set(self.s.heads(m, "core", k, None, src, c)) & set(self.s.heads(m, "qr", k, None, src, c)))
                                            for c in self.p.collections]))
                means = {meth: _mean_over_collections(sub[(sub["method"] == meth) & (sub["head source"] == (src if meth in HEAD_METHODS else "all"))])
                         for meth in ("CoRe-R", "QR-R", "ICR")}
                rows.append({"model": m, "head source": src, "CoRe and QR share": shared, **means,
                             "CoRe-R - QR-R": 100 * (means["CoRe-R"] - means["QR-R"]),
                             "CoRe-R - ICR": 100 * (means["CoRe-R"] - means["ICR"])})
        slots = []
        for m in self.p.models:
            for c in self.p.collections:
                _, _, pos = in_domain_samples(self.s.records(m, c), self.s.collection(c).qrels)
                for slot, n in pd.Series(pos).value_counts().sort_index().items():
                    slots.append({"collection": c, "model": m, "slot": int(slot), "positives": int(n)})
        return self.write("in_domain_sources", pd.DataFrame(rows)), self.write("positive_slots", pd.DataFrame(slots))

    # ---------------------------------------------------------------- controls
    def _set_scores(self, m: str, sets: list[list[tuple[int, int]]], chunk: int = 250) -> np.ndarray:
        """Mean over collections of mean nDCG@10 for each head set (scored on the cached records): [R]."""
        idx = torch.stack([head_index(s) for s in sets])  # [R, K, 2]
        per_collection = []
        for c in self.p.collections:
            qrels = self.s.collection(c).qrels
            scored = []
            for r in self.s.records(m, c):
                rows = []
                for lo in range(0, len(idx), chunk):
                    part = idx[lo: lo + chunk]
                    tok = r.token_scores[part[..., 0], part[..., 1]].sum(1)  # [R, T]
                    rows.append(filtered_doc_sum(tok, r.bounds))
                scored.append((r.query_id, r.doc_ids, torch.cat(rows).numpy()))
            per_collection.append(ndcg_rows(scored, qrels)[1].mean(0))
        return np.mean(per_collection, axis=0)

    def control_sets(self, m: str, n: int | None = None, k: int | None = None, seed: int = 0) -> dict[str, list]:
        """Random head sets: uniform, and layer-matched to the CoRe top-k (all distinct ones when fewer than n)."""
        n = n or self.p.control_sets
        k = k or self.p.num_heads
        spec = self.s.spec(m)
        L, H = spec.num_layers, spec.num_heads
        rng = random.Random(seed)
        every = [(l, h) for l in range(L) for h in range(H)]
        uniform = [rng.sample(every, k) for _ in range(n)]
        layers = sorted(l for l, _ in self.s.heads(m, "core", k))
        counts = pd.Series(layers).value_counts().sort_index()
        distinct = math.prod(math.comb(H, int(c)) for c in counts)
        if distinct <= n:
            per_layer = [list(itertools.combinations([(int(l), h) for h in range(H)], int(c))) for l, c in counts.items()]
            matched = [[h for part in combo for h in part] for combo in itertools.product(*per_layer)]
        else:
            matched = [[(int(l), h) for l, c in counts.items() for h in rng.sample(range(H), int(c))] for _ in range(n)]
        return {"random (uniform)": uniform, "random (layer-matched to CoRe)": matched}

    def controls(self, methods: dict[str, dict[str, list]] | None = None) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
        """Where ICR, QR-R, CoRe-R and NIAH-R fall among random head sets; the in-sample oracle (best single
        heads on the evaluated queries, an upper bound); gemma3's global-attention heads as a set."""
        k = self.p.num_heads
        dist_rows, pos_rows, dists = [], [], {}
        for m in self.p.models:
            spec = self.s.spec(m)
            L, H = spec.num_layers, spec.num_heads
            singles = [[(l, h)] for l in range(L) for h in range(H)]
            single_scores = self._set_scores(m, singles)
            oracle = [singles[i][0] for i in np.argsort(-single_scores, kind="stable")[:k]]
            named = {"ICR": [(l, h) for l in range(L) for h in range(H)],
                     **{name: self.s.heads(m, key, k) for name, key in self.s.head_methods(m).items()},
                     "oracle (in-sample upper bound)": oracle}
            named.update((methods or {}).get(m, {}))
            if globals_ := global_attention_heads(spec):  # None where every layer sees the whole prompt
                named[f"global-attention heads ({len(globals_)})"] = globals_
            method_scores = {name: float(self._set_scores(m, [heads])[0]) for name, heads in named.items()}
            for control, sets in self.control_sets(m).items():
                scores = self._set_scores(m, sets)
                dists[m, control] = scores
                dist_rows.append({"model": m, "control": control, "sets": len(sets), "median": float(np.median(scores)),
                                  "p5": float(np.percentile(scores, 5)), "p95": float(np.percentile(scores, 95))})
                family = []
                for method, score in method_scores.items():
                    pct, pb, pw = analysis.control_p(score, scores)
                    family.append({"model": m, "control": control, "method": method, "ndcg@10": score, "percentile": pct,
                                   "p better": pb, "p worse": pw})
                for f in family:
                    f["verdict"] = ("upper bound (not a method)" if f["method"].startswith("oracle") else
                                    "supported" if f["p better"] < analysis.ALPHA else
                                    "contradicted" if f["p worse"] < analysis.ALPHA else "inconclusive")
                pos_rows += family
        return self.write("controls", pd.DataFrame(dist_rows)), self.write("control_positions", pd.DataFrame(pos_rows)), dists

    # ---------------------------------------------------------------- head-count sweep (Figure 1)
    def sweep(self, max_heads: int | None = None, temperature: float | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
        rows, peaks = [], []
        for m in self.p.models:
            orders = {o: self.s.head_scores(m, o, temperature).order()[:max_heads] for o in self.s.head_methods(m).values()}
            curves = {}
            for c in self.p.collections:
                recs, qrels = self.s.records(m, c), self.s.collection(c).qrels
                icr = evaluate_run(record_run(recs), qrels)["ndcg@10"]
                for o, order in orders.items():
                    curve = sweep_curve(recs, order, qrels)
                    curves[c, o] = (curve, icr)
                    rows.append(pd.DataFrame({"model": m, "collection": c, "order": o, "heads": np.arange(1, len(curve) + 1),
                                              "ndcg@10": curve}))
            for o in orders:
                mean = np.mean([curves[c, o][0] for c in self.p.collections], axis=0)
                icr = float(np.mean([curves[c, o][1] for c in self.p.collections]))
                rows.append(pd.DataFrame({"model": m, "collection": "mean over collections", "order": o,
                                          "heads": np.arange(1, len(mean) + 1), "ndcg@10": mean}))
                for c, (curve, ic) in [(c, curves[c, o]) for c in self.p.collections] + [("mean over collections", (mean, icr))]:
                    peaks.append({"model": m, "collection": c, "order": o, "peak ndcg@10": float(curve.max()),
                                  "heads at peak": int(curve.argmax()) + 1, "1 head": float(curve[0]),
                                  "8 heads": float(curve[7]) if len(curve) > 7 else float("nan"), "ICR": ic})
        return self.write("sweep", pd.concat(rows)), self.write("sweep_peaks", pd.DataFrame(peaks))

    def peak_test(self, few: int = analysis.FEW_HEADS, temperature: float | None = None) -> pd.DataFrame:
        """'Peak below 10 heads' without choosing the peak on the data that tests it: on one half of
        the queries choose the best k < 10 and the best k >= 10 (CoRe order); compare the two on the other half."""
        frames = []
        for m in self.p.models:
            order = self.s.head_scores(m, "core", temperature).order()
            per_q = []
            for c in self.p.collections:
                recs, qrels = self.s.records(m, c), self.s.collection(c).qrels
                qids, mat = ndcg_rows([(r.query_id, r.doc_ids, cumulative_doc_scores(r, order).numpy()) for r in recs], qrels)
                per_q.append(pd.DataFrame(mat, index=qids).assign(collection=c).reset_index(names="query_id"))
            table = pd.concat(per_q, ignore_index=True)
            first, second = analysis.split_halves(table[["collection"]], self.p.seed)
            ks = [col for col in table.columns if isinstance(col, (int, np.integer))]
            curve = table.loc[first].groupby("collection")[ks].mean().mean()  # collection-weighted, first half
            k_few = int(curve[[x for x in ks if x < few]].idxmax()) + 1
            k_many = int(curve[[x for x in ks if x >= few]].idxmax()) + 1
            test = table.loc[second]
            frames.append(pd.DataFrame({"model": m, "collection": test["collection"], "query_id": test["query_id"],
                                        "head source": "nq", "k": 0, "first stage": self.p.first_stage,
                                        "method": f"CoRe-R, best k < {few} (k={k_few}, chosen on the other half)",
                                        "ndcg@10": test[k_few - 1].values}))
            frames.append(pd.DataFrame({"model": m, "collection": test["collection"], "query_id": test["query_id"],
                                        "head source": "nq", "k": 0, "first stage": self.p.first_stage,
                                        "method": f"CoRe-R, best k >= {few} (k={k_many}, chosen on the other half)",
                                        "ndcg@10": test[k_many - 1].values}))
        pq = pd.concat(frames, ignore_index=True)
        rows = []
        for m, g in pq.groupby("model", sort=False):
            few_m, many_m = list(dict.fromkeys(g["method"]))
            rows.append(self.compare(g.assign(method=g["method"].map({few_m: "few", many_m: "many"})), [("few", "many", "nq")])
                        .assign(a=few_m, b=many_m, claim=f"peak below {few} heads: best k < {few} beats best k >= {few}"))
        out = pd.concat(rows, ignore_index=True)
        out["p holm"] = analysis.holm(out["p"])
        out["verdict"] = [analysis.superiority_verdict(d, p) for d, p in zip(out["difference"], out["p holm"])]
        return out

    # ---------------------------------------------------------------- depth (Figure 2)
    def depth(self, k: int | None = None, temperature: float | None = None) -> pd.DataFrame:
        k = k or self.p.num_heads
        rows = []
        for m in self.p.models:
            top = self.s.head_scores(m, "core", temperature).table().head(k)
            inside, kk, p_more, p_fewer = analysis.middle_third_test(top["relative_depth"])
            spec = self.s.spec(m)
            global_layers = global_attention_layers(spec)
            rows.append({"model": m, "layers": spec.num_layers, "top heads": kk,
                         "top layers": sorted(top["layer"].tolist()), "in middle third": inside,
                         "median relative depth": float(top["relative_depth"].median()), "p more": p_more, "p fewer": p_fewer,
                         "global-attention layers": "all" if global_layers is None else str(global_layers),
                         "top heads in global layers": kk if global_layers is None else int(top["layer"].isin(global_layers).sum())})
        df = pd.DataFrame(rows)
        df["p more holm"], df["p fewer holm"] = analysis.holm(df["p more"]), analysis.holm(df["p fewer"])
        df["verdict"] = [analysis.middle_third_verdict(a, b) for a, b in zip(df["p more holm"], df["p fewer holm"])]
        return self.write("depth", df)

    # ---------------------------------------------------------------- pruning (Figure 3)
    def pruning(self, k: int | None = None, temperature: float | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
        """nDCG@10 of CoRe-R, QR-R and NIAH-R with the heads re-selected among the kept layers, per pruned share
        (exact from all-layer records), and the per-query table of CoRe-R at 0% and 50% for the margin test."""
        k = k or self.p.num_heads
        rows, pq = [], []
        for m in self.p.models:
            total = self.s.spec(m).num_layers
            for share in self.p.prune_levels:
                kept = kept_layers(total, share)
                for method, key in self.s.head_methods(m).items():
                    heads = self.s.heads(m, key, k, temperature, max_layers=kept)
                    vals = []
                    for c in self.p.collections:
                        pqs = per_query(record_run(self.s.records(m, c), heads), self.s.collection(c).qrels)
                        vals.append(pqs.mean())
                        if method == "CoRe-R" and share in (0.0, 0.5):
                            pq.append(pd.DataFrame({"model": m, "collection": c, "query_id": pqs.index.astype(str),
                                                    "method": f"{share:.0%} pruned", "ndcg@10": pqs.values,
                                                    "head source": "nq"}))
                    rows.append({"model": m, "method": method, "pruned share": share, "kept layers": kept,
                                 "ndcg@10": float(np.mean(vals)), "deepest head": max(l for l, _ in heads)})
        return self.write("pruning", pd.DataFrame(rows)), (pd.concat(pq, ignore_index=True) if pq else pd.DataFrame())

    def pruning_cost(self, tokens: int | None = None, repeats: int = 3) -> pd.DataFrame:
        """Measured cost of extraction on the pruned model at each pruned share, and of the unpruned
        model that exits after the deepest top-k CoRe head, for every model of the profile
        (``model_pruning_cost``: cached per model, so a stopped run keeps the models it timed)."""
        frames = [self.model_pruning_cost(m, tokens, repeats) for m in self.p.models]
        return self.write("pruning_cost", pd.concat(frames, ignore_index=True))

    def model_pruning_cost(self, m: str, tokens: int | None = None, repeats: int = 3) -> pd.DataFrame:
        """One model's pruning cost. Each configuration runs in its own process (``bench.measure``:
        median of ``repeats`` after a warm-up; peak memory above the process's baseline, or peak GPU
        allocation) on one real prompt of about ``tokens`` tokens (default: the length of the
        profile's first prompt). Ratios are to the unpruned model in the same call. The rows are
        cached under ``$CORELIB_CACHE/timings``, keyed by everything that sets them (model, prompt
        length, repeats, pruned shares, exit layer, device, threads, CPU, torch version), and carry
        the time they were measured; delete that folder to measure again."""
        from .bench import busy_cpu_share, machine_key, measure

        spec = self.s.spec(m)
        total = spec.num_layers
        exit_layers = max(l for l, _ in self.s.heads(m, "core")) + 1
        n_tokens = tokens
        if n_tokens is None:
            lm, c = self.s.model(m), self.s.collection(self.p.collections[0])
            cand = self.s.candidates(m, self.p.collections[0])
            q = next(iter(cand.ranking))
            docs = prompt_order([c.document(d, self.p.words) for d in cand.ranking[q]])
            n_tokens = len(build_prompt(lm.tokenizer, c.queries[q], docs, lm.prefix, lm.suffix).input_ids)
        key = {"model": m, "tokens": n_tokens, "repeats": repeats, "pruned shares": list(self.p.prune_levels),
               "exit layers": exit_layers, **machine_key()}
        cache = cache_root() / "timings" / "pruning_cost" / f"{m}-{_digest(key)}.json"
        if cache.is_file():
            log.info("pruning cost of %s: cached (%s)", m, cache)
            return pd.DataFrame(json.loads(cache.read_text())["rows"])
        busy = busy_cpu_share()
        if not torch.cuda.is_available() and busy > 0.25:
            log.warning("%.0f%% of the CPU is busy with other processes before timing %s: the latency ratios "
                        "will be noisy; stop them (e.g. a `make warm` job) for clean numbers", 100 * busy, m)
        rows = []
        for share in self.p.prune_levels:
            kept = kept_layers(total, share)
            row = (measure(m, "pruned", n_tokens, repeats, self.s.data, layers=kept) if kept < total
                   else measure(m, "b", n_tokens, repeats, self.s.data))
            rows.append({**row, "pruned share": share, "kept layers": kept, "run": "pruned"})
        rows.append({**measure(m, "eexit", n_tokens, repeats, self.s.data, layers=exit_layers),
                     "pruned share": 0.0, "kept layers": total, "run": f"early exit after layer {exit_layers - 1}"})
        errors = [r["error"] for r in rows if "error" in r]
        if errors:
            raise RuntimeError(f"pruning cost of {m} not measured: {errors[0]}")
        df = pd.DataFrame(rows).rename(columns={"model_and_run_mb": "model and run MB"})
        base = df[(df.run == "pruned") & (df["kept layers"] == total)].iloc[0]
        df["latency ratio"] = df.seconds / base.seconds
        df["memory ratio"] = df["model and run MB"] / base["model and run MB"]
        df["measured"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        df = df[self.columns("pruning_cost")]
        # a killed run leaves no half-written cache file
        atomic_write_text(cache, json.dumps({"key": key, "busy cpu share before": busy, "rows": df.to_dict("records")}, indent=1))
        return df

    def practitioner_cost(self, pq: pd.DataFrame, queries: int = 10) -> pd.DataFrame:
        """Per-query latency of the bi-encoder re-ranker (cold: encoding the query and its candidates;
        warm: the corpus embeddings precomputed), ICR / CoRe-R (one calibrated forward over all layers)
        and CoRe-R with the early exit after its deepest head, timed side by side in this process on
        the first ``queries`` queries of the profile's first collection, as ratios to the cold
        bi-encoder; nDCG@10 is each method's mean over collections from the per-query table."""
        from ..dense import corpus_embeddings, document_texts
        from ..records import build_record
        from .bench import busy_cpu_share, timed

        m, c = self.p.models[0], self.p.collections[0]
        coll, cand, enc = self.s.collection(c), self.s.candidates(m, c), self.s.encoder()
        ids, emb = corpus_embeddings(enc, coll)  # the warm bi-encoder's precomputed corpus (not timed)
        row = {d: i for i, d in enumerate(ids)}
        lm = self.s.model(m)
        exit_layers = max(l for l, _ in self.s.heads(m, "core")) + 1
        cuda = lm.device.type == "cuda"
        if not cuda and busy_cpu_share() > 0.25:
            log.warning("the CPU is busy with other processes: the practitioner cost timings will be noisy")
        times: dict[str, list[float]] = {}
        for q in list(cand.ranking)[:queries]:
            query, docs = coll.queries[q], cand.ranking[q]
            texts = document_texts(coll, docs)
            prompt_docs = prompt_order([coll.document(d, self.p.words) for d in docs])
            runs = {
                "Bi-encoder (cold)": lambda: enc.encode([query] + texts),
                "Bi-encoder (warm)": lambda: enc.encode([query]) @ emb[[row[d] for d in docs]].T,
                "ICR / CoRe-R (all layers)": lambda: build_record(lm, query, prompt_docs, words=self.p.words),
                f"CoRe-R, early exit after layer {exit_layers - 1}":
                    lambda: build_record(lm, query, prompt_docs, num_layers=exit_layers, words=self.p.words),
            }
            for name, fn in runs.items():
                times.setdefault(name, []).append(timed(fn, cuda))
        means = self._nq_wide(pq).groupby(level=["model", "collection"]).mean().groupby(level="model").mean()
        ndcg = {"Bi-encoder (cold)": "Bi-encoder", "Bi-encoder (warm)": "Bi-encoder", "ICR / CoRe-R (all layers)": "ICR"}
        base = float(np.median(times["Bi-encoder (cold)"]))
        device = f"{lm.device.type}, {torch.get_num_threads()} threads" if not cuda else torch.cuda.get_device_name()
        rows = []
        for name, t in times.items():
            method = ndcg.get(name, "CoRe-R")
            rows.append({"model": m, "collection": c, "method": name, "queries timed": len(t),
                         "seconds per query": float(np.median(t)), "ratio to bi-encoder (cold)": float(np.median(t)) / base,
                         "nDCG@10 (mean over collections)": float(means.loc[m, method]), "device": device})
        rows.insert(3, {**rows[2], "method": "(CoRe-R with all layers: the same forward as ICR)",
                        "nDCG@10 (mean over collections)": float(means.loc[m, "CoRe-R"])})
        return self.write("practitioner_cost", pd.DataFrame(rows))

    def scaling(self) -> pd.DataFrame:
        """The scaling view: per model (by parameter count) the Table 1 means, the random-head median, the
        paired differences with their CIs, the depth of the top CoRe heads and the share of CoRe-R's
        nDCG@10 kept at 50% pruning; read from the tables the notebooks wrote before (NaN where absent)."""
        from .profiles import MODEL_FACTS, ModelFacts

        avg, cmp_, ctl, depth, prune = (self.read(n) for n in ("table1_average", "comparisons_table1", "controls", "depth", "pruning"))
        if avg is None:
            raise ValueError("the scaling view reads table1_average: run notebook 03 (Table 1) first")
        rows = []
        for _, r in avg.iterrows():
            m = r["model"]
            facts = MODEL_FACTS.get(m, ModelFacts("", "", ""))  # a model outside the built-ins: its size only
            row = {"model": m, "parameters": float(self.s.parameter_count(m)), **asdict(facts), "queries": r["queries"],
                   **{k: r[k] for k in ("BM25", "ICR", "QR-R", "CoRe-R", "NIAH-R")}}
            u = ctl[(ctl["model"] == m) & (ctl["control"] == "random (uniform)")] if ctl is not None else ()
            row["random 8 heads (median)"] = float(u["median"].iloc[0]) if len(u) else float("nan")
            for other in ("ICR", "QR-R"):
                c = cmp_[(cmp_["model"] == m) & (cmp_["a"] == "CoRe-R") & (cmp_["b"] == other) & (cmp_["head source"] == "nq")] \
                    if cmp_ is not None else ()
                for col, src in (("", "difference"), (" ci low", "ci low"), (" ci high", "ci high")):
                    row[f"CoRe-R - {other}{col}"] = float(c[src].iloc[0]) if len(c) else float("nan")
            d = depth[depth["model"] == m] if depth is not None else ()
            row["top CoRe heads: median relative depth"] = float(d["median relative depth"].iloc[0]) if len(d) else float("nan")
            pr = prune[(prune["model"] == m) & (prune["method"] == "CoRe-R")] if prune is not None else None
            kept = pr.set_index("pruned share")["ndcg@10"] if pr is not None and len(pr) else {}
            row["CoRe-R kept at 50% pruning"] = float(kept[0.5] / kept[0.0]) if 0.5 in kept and 0.0 in kept else float("nan")
            rows.append(row)
        return self.write("scaling", pd.DataFrame(rows).sort_values("parameters"))

    def pruning_margin(self, pq: pd.DataFrame, margin: float = analysis.PRUNING_MARGIN) -> pd.DataFrame:
        """Non-inferiority (TOST) of CoRe-R on the 50%-pruned model against the unpruned one."""
        rows = []
        models = list(dict.fromkeys(pq["model"]))
        for m in models + (["pooled (a query once)"] if len(models) > 1 else []):
            pool = m.startswith("pooled")
            d = analysis.paired_differences(pq if pool else pq[pq["model"] == m], "50% pruned", "0% pruned", pool=pool)
            r = analysis.paired(d)
            rows.append({"claim": f"50% pruning within {margin} point", "model": m, "a": "CoRe-R, 50% pruned",
                         "b": "CoRe-R, unpruned", "head source": "nq", "difference": r.estimate, "ci low": r.ci_low,
                         "ci high": r.ci_high, "p": analysis.one_sided_p(d, margin, greater=True),
                         "p inferior": analysis.one_sided_p(d, margin, greater=False),
                         "detectable (80% power)": r.mde, "queries": r.queries, "collections": r.collections,
                         "identical": r.identical})
        df = pd.DataFrame(rows)
        df["p holm"] = analysis.holm(df["p"])
        df["p holm inferior"] = analysis.holm(df["p inferior"])  # the test that can contradict: both are shown
        df["verdict"] = [analysis.margin_verdict(a, b, i) for a, b, i in zip(df["p holm"], df["p holm inferior"], df["identical"])]
        return df.drop(columns=["identical"])


def sweep_curve(records: list[QueryRecord], order, qrels) -> np.ndarray:
    """Mean nDCG@10 using the first k heads of ``order``, k = 1..K (one ranx kernel call)."""
    scored = [(r.query_id, r.doc_ids, cumulative_doc_scores(r, order).numpy()) for r in records]
    return ndcg_rows(scored, qrels)[1].mean(0)


def _config(model):
    return model.config() if hasattr(model, "config") and callable(model.config) else model.backbone.config


def global_attention_layers(model) -> list[int] | None:
    """The layers that attend over the whole context, where a model mixes in sliding-window layers
    (gemma3: 3 of 18 layers are global); None when every layer is global or the config says nothing."""
    types = getattr(_config(model), "layer_types", None)
    if not types or all(t == "full_attention" for t in types):
        return None
    return [l for l, t in enumerate(types[: model.num_layers]) if t == "full_attention"]


def global_attention_heads(model) -> list[tuple[int, int]] | None:
    """The heads of ``global_attention_layers`` (None where every layer is global)."""
    layers = global_attention_layers(model)
    return None if layers is None else [(l, h) for l in layers for h in range(model.num_heads)]


def attention_note(name: str, model) -> str | None:
    """A sentence for the report where a model's layers do not all see the whole prompt (None otherwise)."""
    layers = global_attention_layers(model)
    if layers is None:
        return None
    window = getattr(_config(model), "sliding_window", None)
    return (f"{name}: {model.num_layers - len(layers)} of its {model.num_layers} layers attend only to the last "
            f"{window} tokens (sliding window); only layers {layers} see the whole prompt, so from the query a head "
            f"of the other layers reaches only the documents within {window} tokens of it. ICR sums every layer's "
            "heads; the depth table counts the top CoRe heads in the global layers, and the head-set controls "
            "include the global-attention heads as a set.")


# ----------------------------------------------------------------------------- ablations (reviewers' questions)


def with_negatives(records: list[QueryRecord], m: int, seed: int = 0) -> list[QueryRecord]:
    """Detection records whose contrast keeps the positive and m negatives drawn at random (seeded),
    so that the count is not confounded with prompt position."""
    from dataclasses import replace

    rng = random.Random(seed)
    out = []
    for r in records:
        negatives = [i for i in range(len(r.doc_ids)) if i != r.positive]
        keep = [r.positive] + sorted(rng.sample(negatives, min(m, len(negatives))))
        idx = torch.tensor(keep)
        out.append(replace(r, doc_ids=[r.doc_ids[i] for i in keep], doc_mass=r.doc_mass[..., idx],
                           doc_mass_na=None if r.doc_mass_na is None else r.doc_mass_na[..., idx], positive=0))
    return out


def length_bias(records: list[QueryRecord], heads=None) -> dict:
    """Does a method favour long documents? Mean within-query Spearman correlation of score and
    document length (tokens), and the length of the top-ranked document over the mean candidate length."""
    from ..scoring import doc_scores

    rhos, ratios = [], []
    for r in records:
        lengths = r.doc_lengths.double()
        s = doc_scores(r, heads).double()
        if lengths.std() > 0 and s.std() > 0:
            rhos.append(pd.Series(s.numpy()).corr(pd.Series(lengths.numpy()), method="spearman"))
        ratios.append(float(lengths[s.argmax()] / lengths.mean()))
    return {"spearman(score, length)": sum(rhos) / max(1, len(rhos)), "top-1 length / mean length": sum(ratios) / len(ratios)}


class Ablations:
    """The reviewers' ablations, on the profile's ablation models, from cached records (plus one
    calibrated detection run for (b))."""

    def __init__(self, tables: Tables):
        self.t, self.s, self.p = tables, tables.s, tables.p

    def mean_ndcg(self, m: str, heads) -> float:
        return float(np.mean([evaluate_run(record_run(self.s.records(m, c), heads), self.s.collection(c).qrels)["ndcg@10"]
                              for c in self.p.collections]))

    def temperature(self, temperatures=(1e-4, 1e-3, 1e-2, 1e-1, 1.0), k: int | None = None) -> pd.DataFrame:
        rows = [{"model": m, "temperature": t, "CoRe-R nDCG@10": self.mean_ndcg(m, self.s.heads(m, "core", k, t))}
                for m in self.p.models_for_ablations for t in temperatures]
        return self.t.write("ablation_temperature", pd.DataFrame(rows))

    def calibrated_detection(self, k: int | None = None) -> pd.DataFrame:
        rows = []
        for m in self.p.models_for_ablations:
            for calibrated in (False, True):
                for method in ("core", "qr"):
                    s = self.s.head_scores(m, method, calibrated=calibrated)
                    rows.append({"model": m, "method": method, "calibrated detection": calibrated,
                                 "nDCG@10": self.mean_ndcg(m, s.order()[: k or self.p.num_heads])})
        return self.t.write("ablation_calibrated_detection", pd.DataFrame(rows))

    def negatives_positions(self, negatives=(1, 3, 7, 19), k: int | None = None) -> pd.DataFrame:
        from ..heads import detect_heads

        k = k or self.p.num_heads
        rows = []
        for m in self.p.models_for_ablations:
            det = self.s.detection(m)
            for n in negatives:
                if n <= self.p.negatives:
                    s = detect_heads(with_negatives(det, n, self.p.seed), "core", temperature=self.p.temperature, model_id=m)
                    rows.append({"model": m, "ablation": f"{n} negatives (drawn at random)", "nDCG@10": self.mean_ndcg(m, s.order()[:k])})
            for pos in sorted({r.positive for r in det}):
                s = detect_heads([r for r in det if r.positive == pos], "core", temperature=self.p.temperature, model_id=m)
                rows.append({"model": m, "ablation": f"positive only at prompt slot {pos} (of {len(det[0].doc_ids)})",
                             "nDCG@10": self.mean_ndcg(m, s.order()[:k])})
        return self.t.write("ablation_negatives_positions", pd.DataFrame(rows))

    def length_bias(self, k: int | None = None) -> pd.DataFrame:
        rows = []
        for m in self.p.models_for_ablations:
            sets = {"ICR": None, "QR-R": self.s.heads(m, "qr", k), "CoRe-R": self.s.heads(m, "core", k)}
            for c in self.p.collections:
                recs = self.s.records(m, c)
                rows += [{"model": m, "collection": c, "method": method, **length_bias(recs, heads)} for method, heads in sets.items()]
        return self.t.write("ablation_length_bias", pd.DataFrame(rows))


def explore(study: "Study", model: str, method: str, k: int, temperature: float, collection: str | None = None):
    """What the explorer shows: nDCG@10 per collection of BM25, ICR and the method's top-k heads at a
    temperature, and the method's head-count curve on one collection (or the mean). No table is written."""
    heads = study.heads(model, method, k, temperature)
    order = study.head_scores(model, method, temperature).order()
    rows, curves = [], []
    for c in study.p.collections:
        recs, qrels = study.records(model, c), study.collection(c).qrels
        rows.append({"collection": c, "BM25": evaluate_run(study.candidates(model, c).run(), qrels)["ndcg@10"],
                     "ICR": evaluate_run(record_run(recs), qrels)["ndcg@10"],
                     f"{method} top-{k}": evaluate_run(record_run(recs, heads), qrels)["ndcg@10"]})
        if collection in (None, c):
            curves.append(sweep_curve(recs, order, qrels))
    table = pd.DataFrame(rows).set_index("collection")
    table.loc["mean"] = table.mean()
    return table, pd.Series(np.mean(curves, axis=0), index=np.arange(1, len(order) + 1), name="ndcg@10")
