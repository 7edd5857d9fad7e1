"""The Study: one object that the notebooks and the study's command line share.

Built from a profile, a data directory and an output directory. It knows where every input and
output lives, computes records only on a cache miss (record keys need no loaded model; a model is
loaded the first time a record is missing), keeps records in memory within a budget, and owns
every table (``tables/schema.py`` defines their columns once; the report reads them through it).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import replace
from functools import cached_property
from pathlib import Path

from ..data import Candidates, Collection, load_collection, load_detection, sample_queries
from ..first_stage import first_stage
from ..heads import HeadScores, detect_heads, head_ranking_path, in_domain_samples, scores_from_mass
from ..models import LoadedModel, ModelSpec, as_spec, model_spec
from ..prompts import CandidateOrder
from ..niah import (NEEDLES, NiahError, TrialResult, TrialStore, collection_haystack, niah_scores,
                    run_trials, trial_grid, trial_status)
from ..records import CacheStatus, QueryRecord, RecordStore, record_status
from ..rerank import Reranker, detection_records, detection_requests
from .methods import DETECTED, HEAD_SOURCES, NIAH_SOURCE
from .profiles import Profile, profile

log = logging.getLogger(__name__)

POSITION_MATCHED_NEGATIVES = 4
# warm's record steps besides the collections (whose steps are their names)
DETECTION, CALIBRATED_DETECTION, NIAH_TRIALS = "NQ detection", "calibrated NQ detection", "needle trials"
SHUFFLED = " (shuffled)"  # warm's step for a collection's records with shuffled candidates: "<collection> (shuffled)"


class Study:
    """A reproduction run: ``Study("cpu", data="../shared/data", out="../results")``.

    out: the results directory; tables go to ``out/<profile>/tables``, head rankings to
    ``out/heads`` (cpu profile) or ``out/<profile>/heads``; figures to ``figures/<profile>``
    (``figures`` defaults to a sibling of ``out``). ``models`` narrows the profile's models.
    """

    def __init__(self, profile_name: str | Profile = "quick", data: str | os.PathLike | None = None,
                 out: str | os.PathLike = "results", figures: str | os.PathLike | None = None,
                 models=None, store: RecordStore | None = None, **overrides):
        p = profile(profile_name, **overrides)
        if models:
            unknown = sorted(set(models) - set(p.models))
            if unknown:
                raise ValueError(f"{unknown} not in profile {p.name!r} (its models: {', '.join(p.models)})")
            p = profile(p, models=tuple(models))
        self.p = p
        self.data = data
        self.out = Path(out)
        self.tables_dir = self.out / p.name / "tables"
        self.figures_dir = Path(figures) / p.name if figures else self.out.parent / "figures" / p.name
        self.heads_dir = self.out / ("heads" if p.name == "cpu" else f"{p.name}/heads")
        self.store = store or RecordStore(memory_mb=float(os.environ.get("CORELIB_RECORD_MEMORY_MB", 6144)))
        self._specs: dict[str, ModelSpec] = {}
        self._collections: dict[str, Collection] = {}
        self._scores: dict[tuple, HeadScores] = {}
        self._candidates: dict[tuple, Candidates] = {}
        self._in_domain: dict[tuple, tuple] = {}
        self._niah: dict[str, list[TrialResult]] = {}
        self._head_methods: dict[str, dict[str, str]] = {}
        self._bi_encoder: dict[tuple, dict] = {}
        self._encoder = None
        self.shard: tuple[int, int] | None = None  # (index, count): this process computes every count-th record

    def __repr__(self) -> str:
        return f"Study({self.p.name!r}: {', '.join(self.p.models)}; {self.p.sizes()})"

    # ------------------------------------------------------------------ inputs
    def spec(self, model: str) -> ModelSpec:
        """The model's identity; ``.load()`` loads it once (only when a record is missing)."""
        if model not in self._specs:
            self._specs[model] = model_spec(model)
        return self._specs[model]

    def use_model(self, name: str, model: LoadedModel | ModelSpec) -> None:
        """Use an already built model under ``name`` (e.g. a random-weight stand-in in a test)."""
        self._specs[name] = as_spec(model)

    def parameter_count(self, model: str) -> int:
        """Parameters of the model's backbone, counted on the meta device from its config (no weights read)."""
        s = self.spec(model)
        import torch
        from transformers import AutoModel

        with torch.device("meta"):
            return sum(p.numel() for p in AutoModel.from_config(s.config()).parameters())

    def model(self, model: str) -> LoadedModel:
        return self.spec(model).load()

    def collection(self, name: str) -> Collection:
        if name not in self._collections:
            self._collections[name] = load_collection(name, self.data)
        return self._collections[name]

    def encoder(self):
        """The profile's sentence encoder (dense first stage, bi-encoder baseline), loaded once."""
        if self._encoder is None:
            from ..dense import Encoder

            self._encoder = Encoder(self.p.encoder)
        return self._encoder

    def bi_encoder_run(self, model: str, collection: str) -> dict[str, dict[str, float]]:
        """The encoder re-ranking the profile's candidates of a collection (computed once)."""
        from ..dense import bi_encoder_run

        key = (collection, self.p.queries_for(model, collection))
        if key not in self._bi_encoder:
            self._bi_encoder[key] = bi_encoder_run(self.encoder(), self.collection(collection),
                                                   self.candidates(model, collection))
        return self._bi_encoder[key]

    def candidates(self, model: str, collection: str, method: str | None = None) -> Candidates:
        """The profile's query sample of a collection, with its first-stage top-k (``method``: bm25
        or dense; default the profile's first stage)."""
        n = self.p.queries_for(model, collection)
        method = method or self.p.first_stage
        if (collection, n, method) not in self._candidates:
            coll = self.collection(collection)
            self._candidates[collection, n, method] = first_stage(
                coll, self.p.top_k, sample_queries(coll, n, self.p.seed), method=method,
                encoder=self.encoder() if method == "dense" else None)
        return self._candidates[collection, n, method]

    def records(self, model: str, collection: str, calibrate: bool = True) -> list[QueryRecord]:
        """All-head records of the profile's query sample of a collection (cached)."""
        cand = self.candidates(model, collection)
        return self._reranker(model, calibrate).records(self.collection(collection), cand, self._share(list(cand.ranking)))

    def _reranker(self, model: str, calibrate: bool = True, order: CandidateOrder | None = None) -> Reranker:
        return Reranker(self.spec(model), calibrate=calibrate, top_k=self.p.top_k, words=self.p.words, store=self.store,
                        order=order)

    @property
    def shuffled_order(self) -> CandidateOrder:
        return CandidateOrder(shuffle_seed=self.p.order_seed)

    def order_sample(self, model: str, collection: str) -> list[str]:
        """The candidate-order check's queries of a collection: a stratified part of the model's sample
        (all of it up to ``order_all_up_to`` queries, else a seeded ``order_queries`` of it), sorted."""
        import random

        qids = list(self.candidates(model, collection).ranking)
        if len(qids) <= self.p.order_all_up_to or len(qids) <= self.p.order_queries:
            return qids
        return sorted(random.Random(f"order:{self.p.order_seed}").sample(qids, self.p.order_queries))

    def shuffled_records(self, model: str, collection: str) -> list[QueryRecord]:
        """All-head records of ``order_sample`` with the same candidates in a seeded random order per query
        (the permutation is stored with each record and is part of its key)."""
        if model not in self.p.order_models:
            raise ValueError(f"profile {self.p.name!r} runs the candidate-order check for "
                             f"{', '.join(self.p.order_models) or 'no model'}, not {model}")
        rr = self._reranker(model, order=self.shuffled_order)
        qids = self._share(self.order_sample(model, collection))
        return rr.records(self.collection(collection), self.candidates(model, collection), qids)

    def _share(self, items: list) -> list:
        return items if self.shard is None else items[self.shard[0]:: self.shard[1]]

    def _detection_samples(self, model: str):
        return load_detection(self.data, self.p.detection_for(model), self.p.negatives, self.p.positions,
                              words=self.p.words, seed=self.p.seed)

    def detection(self, model: str, calibrate: bool = False) -> list[QueryRecord]:
        return detection_records(self.spec(model), self._share(self._detection_samples(model)), calibrate=calibrate,
                                 store=self.store)

    # ------------------------------------------------------------------ warm: the record steps
    def warm_steps(self, model: str, multilingual: bool = True) -> list[str]:
        """A model's record steps in the order ``warm`` runs them: NQ detection, the collections
        (smallest first), the multilingual ones, the calibrated detection records of the ablation
        models (notebook 9), and the needle trials."""
        sizes = {c: len(self.candidates(model, c).ranking) for c in self.p.collections}
        steps = [DETECTION, *sorted(self.p.collections, key=sizes.get), *(self.p.multilingual if multilingual else ())]
        if model in self.p.order_models:
            steps += [c + SHUFFLED for c in sorted(self.p.collections, key=sizes.get)]
        if model in self.p.models_for_ablations:
            steps.append(CALIBRATED_DETECTION)
        if self.p.niah_needles:
            steps.append(NIAH_TRIALS)
        return steps

    def run_step(self, model: str, step: str) -> int:
        """Read, or compute and cache, a step's records (or needle trials); returns how many it has."""
        if step == NIAH_TRIALS:
            return len(self.niah_trials(model))
        if step in (DETECTION, CALIBRATED_DETECTION):
            return len(self.detection(model, calibrate=step == CALIBRATED_DETECTION))
        if step.endswith(SHUFFLED):
            return len(self.shuffled_records(model, step.removesuffix(SHUFFLED)))
        return len(self.records(model, step))

    def step_status(self, model: str, step: str) -> CacheStatus:
        """What the cache holds of a step's records (or trials): from file names and a few file headers;
        nothing is loaded or computed."""
        spec = self.spec(model)
        if step == NIAH_TRIALS:
            haystack = collection_haystack(self.collection(self.p.niah_haystack))
            return trial_status(spec, self.niah_grid(), haystack, store=TrialStore(self.store.root))
        if step in (DETECTION, CALIBRATED_DETECTION):
            requests = detection_requests(self._detection_samples(model))
            return record_status(spec, requests, calibrate=step == CALIBRATED_DETECTION, store=self.store)
        if step.endswith(SHUFFLED):
            c = step.removesuffix(SHUFFLED)
            rr = self._reranker(model, order=self.shuffled_order)
            return rr.status(rr.collection_requests(self.collection(c), self.candidates(model, c), self.order_sample(model, c)))
        rr = self._reranker(model)
        return rr.status(rr.collection_requests(self.collection(step), self.candidates(model, step)))

    def warm(self, models=None, multilingual: bool = True, steps=None) -> None:
        """Compute and cache every record the notebooks read, one model at a time, step by step
        (``warm_steps``; ``steps``: only these). Stop and re-run to resume."""
        from ..storage import check_cache_writable

        check_cache_writable(self.store.root)  # before the first forward, not after it
        for m in models or self.p.models:
            known = self.warm_steps(m, multilingual)
            unknown = [s for s in steps or () if s not in known]
            if unknown:
                raise ValueError(f"no warm step {', '.join(map(repr, unknown))} for {m} in profile {self.p.name}; "
                                 f"its steps: {', '.join(known)}")
            for step in (s for s in known if not steps or s in steps):
                t0 = time.perf_counter()
                n = self.run_step(m, step)
                log.info("%s %s: %d %s (%.0f s)", m, step, n, "trials" if step == NIAH_TRIALS else "records",
                         time.perf_counter() - t0)

    def pending(self, models=None, multilingual: bool = True):
        """What ``warm`` has left, per model and step: records (or trials) needed, cached and missing,
        and the time left at the median compute time of the step's cached records; for a step with
        none timed yet, of the model's other steps of the same kind (a calibrated record, one packed
        forward with the N/A suffix, costs more than an uncalibrated NQ detection record), else of all
        its other record steps (``timed on`` says which). Records written before their files stored a
        time have none. A damaged file counts as cached until it is read."""
        import pandas as pd

        nan, rows = float("nan"), []
        for m in models or self.p.models:
            statuses = {step: self.step_status(m, step) for step in self.warm_steps(m, multilingual)}
            timed = {step: st.seconds for step, st in statuses.items() if step != NIAH_TRIALS}
            calibrated = [t for step, ts in timed.items() if step != DETECTION for t in ts]  # all but NQ detection
            pooled = [t for ts in timed.values() for t in ts]
            for step, st in statuses.items():
                timed_on = "this step" if st.seconds else "-"
                if not st.seconds and st.missing and step in timed:
                    if step != DETECTION and calibrated:
                        st, timed_on = replace(st, seconds=calibrated), "calibrated steps"
                    elif pooled:
                        st, timed_on = replace(st, seconds=pooled), "other steps"
                rows.append({"model": m, "step": step, "needed": st.needed, "cached": st.needed - len(st.missing),
                             "missing": len(st.missing), "s each (median)": nan if st.median_s is None else st.median_s,
                             "timed on": timed_on, "estimate (h)": nan if st.estimate_s is None else st.estimate_s / 3600})
        return pd.DataFrame(rows, columns=["model", "step", "needed", "cached", "missing", "s each (median)", "timed on",
                                           "estimate (h)"])

    # ------------------------------------------------------------------ NIAH
    def niah_grid(self):
        if not self.p.niah_needles:
            raise ValueError(f"profile {self.p.name!r} has no NIAH grid (niah_needles=None)")
        return trial_grid(NEEDLES[: self.p.niah_needles], self.p.niah_lengths, self.p.niah_depths)

    def niah_trials(self, model: str) -> list[TrialResult]:
        """The profile's needle trials for a model (cached on disk; decoded only when missing)."""
        if model not in self._niah:
            grid = self.niah_grid()
            if self.shard is not None:
                grid = self._share(grid)
            haystack = collection_haystack(self.collection(self.p.niah_haystack))
            self._niah[model] = run_trials(self.spec(model), grid, haystack, store=TrialStore(self.store.root),
                                           progress=f"{model} NIAH")
        return self._niah[model]

    def head_methods(self, model: str) -> dict[str, str]:
        """The head-selecting methods of the Table 1 analog for a model: QR-R and CoRe-R, and NIAH-R
        where the profile has a NIAH grid and the model retrieved enough needles to rank its heads."""
        if model not in self._head_methods:
            methods = dict(DETECTED)
            if self.p.niah_needles:
                try:
                    self.head_scores(model, "niah")
                    methods["NIAH-R"] = "niah"
                except NiahError as err:
                    log.warning("no NIAH-R for %s: %s", model, err)
            self._head_methods[model] = methods
        return self._head_methods[model]

    # ------------------------------------------------------------------ heads
    def head_scores(self, model: str, method: str, temperature: float | None = None, source: str = "nq",
                    calibrated: bool = False, exclude: str | None = None) -> HeadScores:
        """Scores of every head. source 'nq': the NQ detection set; 'in-domain' (and
        'in-domain, position-matched'): the profile's collection records with their qrels,
        leaving out collection ``exclude`` (the one the heads will re-rank)."""
        t = self.p.temperature if temperature is None else temperature
        if method == "niah":  # from needle trials: no detection source, no temperature
            if source != "nq" or calibrated:
                raise ValueError(f"NIAH heads come from needle trials, not from the {source!r} detection source")
            t, source, exclude = None, NIAH_SOURCE, None
        key = (model, method, t, source, calibrated, exclude)
        if key not in self._scores:
            spec = self.spec(model)
            ident = {"model_id": spec.model_id, "fingerprint": spec.fingerprint}
            prov = {"source": HEAD_SOURCES.get(source, source), "words": self.p.words, "profile": self.p.name}
            if method == "niah":
                p = self.p
                prov = {"source": NIAH_SOURCE, "haystack": p.niah_haystack, "needles": p.niah_needles,
                        "lengths": list(p.niah_lengths), "depths": list(p.niah_depths), "profile": p.name}
                self._scores[key] = niah_scores(self.niah_trials(model), **ident,
                                                provenance=prov)
            elif source == "nq":
                self._scores[key] = detect_heads(self.detection(model, calibrate=calibrated), method, temperature=t,
                                                 calibrated=calibrated, **ident, provenance=prov)
            elif source in ("in-domain", "in-domain, position-matched"):
                nearest = POSITION_MATCHED_NEGATIVES if source.endswith("matched") else None
                mass, pos = self.in_domain_mass(model, exclude, nearest)
                self._scores[key] = scores_from_mass(mass, pos, method, temperature=t, **ident,
                                                     provenance={**prov, "left out": exclude, "samples": len(pos)})
            else:
                raise ValueError(f"unknown head source {source!r}: use one of {sorted(HEAD_SOURCES)}")
        return self._scores[key]

    def in_domain_mass(self, model: str, exclude: str | None, nearest: int | None = None):
        masses, positives = [], []
        for c in self.p.collections:
            if c == exclude:
                continue
            key = (model, c, nearest)
            if key not in self._in_domain:  # each collection's samples serve every held-out collection but itself
                self._in_domain[key] = in_domain_samples(self.records(model, c), self.collection(c).qrels, nearest)[:2]
            mass, pos = self._in_domain[key]
            masses.append(mass)
            positives.append(pos)
        import torch

        if not masses:
            raise ValueError(f"in-domain detection leaves out the collection it re-ranks ({exclude}), and the profile "
                             "has no other collection: give it at least two collections, or use the NQ heads")
        n = max(m.shape[-1] for m in masses)
        padded = [torch.nn.functional.pad(m, (0, n - m.shape[-1]), value=float("-inf")) for m in masses]
        return torch.cat(padded), torch.cat(positives)

    def heads(self, model: str, method: str, k: int | None = None, temperature: float | None = None,
              source: str = "nq", exclude: str | None = None, max_layers: int | None = None) -> list[tuple[int, int]]:
        """The top-k heads of a method (among the first ``max_layers`` layers when given)."""
        s = self.head_scores(model, method, temperature, source, exclude=exclude)
        order = s.order() if max_layers is None else [h for h in s.order() if h[0] < max_layers]
        return order[: k or self.p.num_heads]

    def save_head_rankings(self, temperature: float | None = None) -> list[Path]:
        """Write each model's CoRe and QR rankings (NQ detection), and NIAH's, for the CLI (``--heads core:8``).
        Only rankings at the profile's temperature are canonical; others go to a ``t=<t>`` folder."""
        t = self.p.temperature if temperature is None else temperature
        where = self.heads_dir if t == self.p.temperature else self.heads_dir / f"t={t:g}"
        methods = {m: ("core", "qr") + (("niah",) if "NIAH-R" in self.head_methods(m) and t == self.p.temperature else ())
                   for m in self.p.models}
        return [self.head_scores(m, method, t).ranking().save(head_ranking_path(where, self.spec(m).model_id, method,
                                                                           self.spec(m).fingerprint))
                for m in self.p.models for method in methods[m]]

    # ------------------------------------------------------------------ tables (the tables package)
    @cached_property
    def tables(self):
        from .tables import Tables

        return Tables(self)
