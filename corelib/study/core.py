"""The Study: one object that the notebooks and the study's command line share.

Built from a profile, a data directory and an output directory. It knows where every input and
output lives, computes records only on a cache miss (record keys need no loaded model; a model is
loaded the first time a record is missing), keeps records in memory within a budget, and owns
every table (``tables/schema.py`` defines their columns once; the report reads them through it).
"""

from __future__ import annotations

import logging
import os
from functools import cached_property
from pathlib import Path

from ..data import Candidates, Collection, load_collection, load_detection, sample_queries
from ..errors import UsageError
from ..first_stage import first_stage
from ..heads import HeadScores, detect_heads, head_ranking_path, in_domain_samples, scores_from_mass
from ..layer_window import best_layer_window, window_heads
from ..models import LoadedModel, ModelSpec, as_spec, model_spec
from ..order_robust import permutation_orders
from ..prompts import CandidateOrder
from ..niah import NEEDLES, NiahError, TrialResult, TrialStore, collection_haystack, niah_scores, run_trials, trial_grid
from ..records import QueryRecord, RecordStore
from ..rerank import Reranker, detection_records
from .methods import DETECTED, HEAD_SOURCES, INVARIANT_SOURCE, NIAH_PROMPT, NIAH_PROMPT_SOURCE, NIAH_SOURCE
from .profiles import Profile, narrowed, profile

log = logging.getLogger(__name__)

POSITION_MATCHED_NEGATIVES = 4  # the in-domain, position-matched source: negatives from the nearest prompt slots


class Study:
    """A reproduction run: ``Study("cpu", data="../shared/data", out="../results")``.

    out: the results directory; tables go to ``out/<profile>/tables``, head rankings to
    ``out/heads`` (cpu profile) or ``out/<profile>/heads``; figures to ``figures/<profile>``
    (``figures`` defaults to a sibling of ``out``). ``models`` narrows the profile's models: the tables it
    writes then replace those models' rows and keep the other models' (``other_models``) committed rows, so
    that one model's results can be recomputed without the others' records (``tables.schema.write``).
    """

    def __init__(self, profile_name: str | Profile = "quick", data: str | os.PathLike | None = None,
                 out: str | os.PathLike = "results", figures: str | os.PathLike | None = None,
                 models=None, store: RecordStore | None = None, **overrides):
        p = profile(profile_name, **overrides)
        full = p.models
        if isinstance(models, str):  # one model's name, not its characters
            models = [models]
        if models:
            p = narrowed(p, models)
        # the profile's models (the order of the tables' rows), and those this study leaves out (whose committed
        # rows its tables keep)
        self.profile_models: tuple[str, ...] = full
        self.other_models: tuple[str, ...] = tuple(m for m in full if m not in p.models)
        self.p = p
        self.data = data
        self.out = Path(out)
        self.tables_dir = self.out / p.name / "tables"
        self.figures_dir = Path(figures) / p.name if figures else self.out.parent / "figures" / p.name
        self.heads_dir = self.out / p.heads_folder
        self.store = store or RecordStore(memory_mb=float(os.environ.get("CORELIB_RECORD_MEMORY_MB", 6144)))
        self._specs: dict[str, ModelSpec] = {}
        self._collections: dict[str, Collection] = {}
        self._scores: dict[tuple, HeadScores] = {}
        self._candidates: dict[tuple, Candidates] = {}
        self._judged: dict[str, int] = {}
        self._in_domain: dict[tuple, tuple] = {}
        self._niah: dict[str, list[TrialResult]] = {}
        self._head_methods: dict[str, dict[str, str]] = {}
        self._windows: dict[tuple, tuple[int, int]] = {}
        self._bi_encoder: dict[tuple, dict] = {}
        self._encoder = None
        self.shard: tuple[int, int] | None = None  # (index, count): this process computes every count-th record

    def __repr__(self) -> str:
        return f"Study({self.p.name!r}: {', '.join(self.p.models)}; {self.p.summary()})"

    # ------------------------------------------------------------------ inputs
    def spec(self, model: str) -> ModelSpec:
        """The model's identity; ``.load()`` loads it once (only when a record is missing)."""
        if model not in self._specs:
            self._specs[model] = model_spec(model, dtype=self.p.dtype_for(model))
        return self._specs[model]

    def use_model(self, name: str, model: LoadedModel | ModelSpec) -> None:
        """Use an already built model under ``name`` (e.g. a random-weight stand-in in a test)."""
        self._specs[name] = as_spec(model)

    def parameter_count(self, model: str) -> int:
        """Parameters of the model's backbone, counted on the meta device from its config (no weights read)."""
        s = self.spec(model)
        import torch
        from transformers import AutoModel

        config = s.config()  # outside the meta device: a first call may convert the model's files
        with torch.device("meta"):
            return sum(p.numel() for p in AutoModel.from_config(config).parameters())

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
        """The encoder re-ranking the profile's candidates of a collection, each read as the LLMs read it (the
        title and the body's first ``words`` words; computed once)."""
        from ..dense import bi_encoder_run

        key = (collection, self.sample_size(model, collection))
        if key not in self._bi_encoder:
            self._bi_encoder[key] = bi_encoder_run(self.encoder(), self.collection(collection),
                                                   self.candidates(model, collection), self.p.words)
        return self._bi_encoder[key]

    def sample_size(self, model: str, collection: str) -> int | None:
        """The model's sampled queries of a collection (None: all its judged test queries)."""
        if dict(self.p.whole_up_to_by_model).get(model) is None:
            return self.p.queries_for(model, collection)
        if collection not in self._judged:  # candidates() asks on every call: count once
            self._judged[collection] = len(sample_queries(self.collection(collection), None))
        return self.p.queries_for(model, collection, self._judged[collection])

    def sampled_queries(self, model: str, collection: str) -> list[str]:
        """The model's query sample of a collection (before the first stage drops a query it finds nothing for)."""
        return sample_queries(self.collection(collection), self.sample_size(model, collection), self.p.seed)

    def candidates(self, model: str, collection: str, method: str | None = None) -> Candidates:
        """The profile's query sample of a collection, with its first-stage top-k (``method``: bm25
        or dense; default the profile's first stage)."""
        n = self.sample_size(model, collection)
        method = method or self.p.first_stage
        if (collection, n, method) not in self._candidates:
            self._candidates[collection, n, method] = first_stage(
                self.collection(collection), self.p.top_k, self.sampled_queries(model, collection), method=method,
                encoder=self.encoder() if method == "dense" else None)
        return self._candidates[collection, n, method]

    def candidates_cached(self, collection: str, method: str | None = None) -> bool:
        """Whether a collection's candidates come without encoding anything: a BM25 first stage, or a dense one
        whose corpus embeddings are cached (``pending`` asks, so that it never encodes a corpus)."""
        method = method or self.p.first_stage
        if method != "dense" or any(key[0] == collection and key[2] == method for key in self._candidates):
            return True  # BM25, or candidates found already (no corpus hashed again)
        from ..dense import embeddings_cached

        return embeddings_cached(self.encoder(), self.collection(collection))

    def query_ids(self, model: str, collection: str) -> list[str]:
        """The queries a collection's records are computed for: those with candidates, or, while a dense
        corpus is not encoded yet, the whole sample (exact dense search finds candidates for every query)."""
        if self.candidates_cached(collection):
            return list(self.candidates(model, collection).ranking)
        return self.sampled_queries(model, collection)

    def records(self, model: str, collection: str, calibrate: bool = True) -> list[QueryRecord]:
        """All-head records of the profile's query sample of a collection (cached)."""
        cand = self.candidates(model, collection)
        return self.reranker(model, calibrate).records(self.collection(collection), cand, self._share(list(cand.ranking)))

    def reranker(self, model: str, calibrate: bool = True, order: CandidateOrder | None = None,
                 invariant: bool = False) -> Reranker:
        """The profile's re-ranker of a model (its candidates' depth, word budget and record store)."""
        return Reranker(self.spec(model), calibrate=calibrate, top_k=self.p.top_k, words=self.p.words, store=self.store,
                        order=order, invariant=invariant)

    @property
    def shuffled_order(self) -> CandidateOrder:
        return CandidateOrder(shuffle_seed=self.p.order_seed)

    def order_sample(self, model: str, collection: str) -> list[str]:
        """The candidate-order check's queries of a collection: a stratified part of the model's sample
        (all of it up to ``order_all_up_to`` queries, else a seeded ``order_queries`` of it), sorted."""
        import random

        qids = self.query_ids(model, collection)
        if len(qids) <= self.p.order_all_up_to or len(qids) <= self.p.order_queries:
            return qids
        return sorted(random.Random(f"order:{self.p.order_seed}").sample(qids, self.p.order_queries))

    def shuffled_records(self, model: str, collection: str, seed: int | None = None) -> list[QueryRecord]:
        """All-head records of ``order_sample`` with the same candidates in a seeded random order per query
        (the permutation is stored with each record and is part of its key); ``seed``: another shuffle than the
        order check's (permutation aggregation's extra orders)."""
        order = self.shuffled_order if seed is None else CandidateOrder(shuffle_seed=seed)
        return self.order_records(model, collection, order)

    def _check_order_model(self, model: str) -> None:
        if model not in self.p.order_models:
            raise UsageError(f"profile {self.p.name!r} runs the candidate-order check for "
                             f"{', '.join(self.p.order_models) or 'no model'}, not {model}")

    def order_records(self, model: str, collection: str, order: CandidateOrder | None = None,
                      invariant: bool = False) -> list[QueryRecord]:
        """All-head records of ``order_sample`` with the candidates in ``order`` (None: ICR's), or under the
        permutation-invariant prompt (``invariant``: one record per query, whatever the order)."""
        self._check_order_model(model)
        rr = self.reranker(model, order=order, invariant=invariant)
        qids = self._share(self.order_sample(model, collection))
        return rr.records(self.collection(collection), self.candidates(model, collection), qids)

    def invariant_records(self, model: str, collection: str) -> list[QueryRecord]:
        return self.order_records(model, collection, invariant=True)

    def remedy_seeds(self) -> list[int]:
        """The shuffle seeds of permutation aggregation's extra orders (``order_robust.permutation_orders``)."""
        return [o.shuffle_seed for o in permutation_orders(self.shuffled_order, max(self.p.order_permutations, default=1),
                                                           self.p.order_seed)[1:]]

    def _share(self, items: list) -> list:
        return items if self.shard is None else items[self.shard[0]:: self.shard[1]]

    def detection_samples(self, model: str):
        """The model's NQ detection prompts (the profile's queries, negatives and positive slots)."""
        return load_detection(self.data, self.p.detection_for(model), self.p.negatives, self.p.positions,
                              words=self.p.words, seed=self.p.seed)

    def detection(self, model: str, calibrate: bool = False, invariant: bool = False) -> list[QueryRecord]:
        """The NQ detection records (``invariant``: under the permutation-invariant prompt, one per query)."""
        return detection_records(self.spec(model), self._share(self.detection_samples(model)), calibrate=calibrate,
                                 store=self.store, invariant=invariant)

    # ------------------------------------------------------------------ warm (the plan lives in warm.py)
    def warm_steps(self, model: str, multilingual: bool = True) -> list[str]:
        """The names of a model's record steps, in the order ``warm`` runs them (``warm.steps``)."""
        from .warm import steps

        return [step.name for step in steps(self, model, multilingual)]

    def warm(self, models=None, multilingual: bool = True, steps=None) -> None:
        """Compute and cache every record the notebooks read (``warm.warm``); stop and re-run to resume."""
        from .warm import warm

        warm(self, models, multilingual, steps)

    def pending(self, models=None, multilingual: bool = True):
        """What ``warm`` has left, per model and step, with an estimate (``warm.pending``)."""
        from .warm import pending

        return pending(self, models, multilingual)

    # ------------------------------------------------------------------ NIAH
    def niah_lengths(self, prompt_length: bool = False) -> tuple[int, ...]:
        """The context lengths of the profile's needle grid (``prompt_length``: its grid at the prompts' length)."""
        if not self.p.niah_needles:
            raise UsageError(f"profile {self.p.name!r} has no NIAH grid (niah_needles=None)")
        if prompt_length and not self.p.niah_prompt_lengths:
            raise UsageError(f"profile {self.p.name!r} has no needle grid at the prompts' length (niah_prompt_lengths=())")
        return self.p.niah_prompt_lengths if prompt_length else self.p.niah_lengths

    def niah_grid(self, prompt_length: bool = False):
        return trial_grid(NEEDLES[: self.p.niah_needles], self.niah_lengths(prompt_length), self.p.niah_depths)

    def niah_trials(self, model: str, prompt_length: bool = False) -> list[TrialResult]:
        """The profile's needle trials for a model (cached on disk; decoded only when missing); ``prompt_length``:
        the grid at the prompts' length."""
        if (model, prompt_length) not in self._niah:
            grid = self.niah_grid(prompt_length)
            if self.shard is not None:
                grid = self._share(grid)
            haystack = collection_haystack(self.collection(self.p.niah_haystack))
            self._niah[model, prompt_length] = run_trials(self.spec(model), grid, haystack, store=TrialStore(self.store.root),
                                                          progress=f"{model} NIAH" + (" (prompt length)" if prompt_length else ""))
        return self._niah[model, prompt_length]

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
                if self.p.niah_prompt_lengths:
                    try:
                        self.head_scores(model, "niah-prompt")
                        methods[NIAH_PROMPT] = "niah-prompt"
                    except NiahError as err:
                        log.warning("no %s for %s: %s", NIAH_PROMPT, model, err)
            self._head_methods[model] = methods
        return self._head_methods[model]

    # ------------------------------------------------------------------ heads
    def head_scores(self, model: str, method: str, temperature: float | None = None, source: str = "nq",
                    calibrated: bool = False, exclude: str | None = None) -> HeadScores:
        """Scores of every head. source 'nq': the NQ detection set; 'in-domain' (and
        'in-domain, position-matched'): the profile's collection records with their qrels,
        leaving out collection ``exclude`` (the one the heads will re-rank)."""
        t = self.p.temperature if temperature is None else temperature
        niah = {"niah": NIAH_SOURCE, "niah-prompt": NIAH_PROMPT_SOURCE}
        if method in niah:  # from needle trials: no detection source, no temperature
            if source != "nq" or calibrated:
                raise UsageError(f"NIAH heads come from needle trials, not from the {source!r} detection source")
            t, source, exclude = None, niah[method], None
        key = (model, method, t, source, calibrated, exclude)
        if key not in self._scores:
            spec = self.spec(model)
            ident = {"model_id": spec.model_id, "fingerprint": spec.fingerprint}
            if method in niah:
                p, long = self.p, method == "niah-prompt"
                prov = {"source": niah[method], "haystack": p.niah_haystack, "needles": p.niah_needles,
                        "lengths": list(self.niah_lengths(long)), "depths": list(p.niah_depths), "profile": p.name}
                self._scores[key] = niah_scores(self.niah_trials(model, long), **ident, provenance=prov)
            elif source in HEAD_SCORERS:
                prov = {"source": HEAD_SOURCES[source], "words": self.p.words, "profile": self.p.name}
                self._scores[key] = HEAD_SCORERS[source](self, model, method, t, calibrated, exclude, ident, prov)
            else:
                raise UsageError(f"unknown head source {source!r}: use one of {sorted(HEAD_SCORERS)}")
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
            raise UsageError(f"in-domain detection leaves out the collection it re-ranks ({exclude}), and the profile "
                             "has no other collection: give it at least two collections, or use the NQ heads")
        n = max(m.shape[-1] for m in masses)
        padded = [torch.nn.functional.pad(m, (0, n - m.shape[-1]), value=float("-inf")) for m in masses]
        return torch.cat(padded), torch.cat(positives)

    def layer_window(self, model: str, temperature: float | None = None, invariant: bool = False) -> tuple[int, int]:
        """(first, last) layer of the best contiguous layer window on the NQ detection records (never on
        evaluated queries), by CoRe's criterion on the window's summed mass (``layer_window.best_layer_window``);
        ``invariant``: on the detection records under the permutation-invariant prompt."""
        t = self.p.temperature if temperature is None else temperature
        key = (model, t, invariant)
        if key not in self._windows:
            self._windows[key] = best_layer_window(self.detection(model, invariant=invariant), t)
        return self._windows[key]

    def layer_window_heads(self, model: str, temperature: float | None = None,
                           invariant: bool = False) -> list[tuple[int, int]]:
        first, last = self.layer_window(model, temperature, invariant)
        return window_heads(first, last, self.spec(model).num_heads)

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


# ---------------------------------------------------------------------- head sources: name -> how its scores are made
def _nq_scores(study: Study, model, method, t, calibrated, exclude, ident, prov) -> HeadScores:
    return detect_heads(study.detection(model, calibrate=calibrated), method, temperature=t, calibrated=calibrated,
                        **ident, provenance=prov)


def _in_domain_scores(nearest: int | None):
    def scores(study: Study, model, method, t, calibrated, exclude, ident, prov) -> HeadScores:
        if calibrated:
            raise UsageError("in-domain detection uses uncalibrated mass only (calibrated=True is the NQ ablation)")
        mass, pos = study.in_domain_mass(model, exclude, nearest)
        return scores_from_mass(mass, pos, method, temperature=t, **ident,
                                provenance={**prov, "left out": exclude, "samples": len(pos)})
    return scores


def _nq_invariant_scores(study: Study, model, method, t, calibrated, exclude, ident, prov) -> HeadScores:
    return detect_heads(study.detection(model, calibrate=calibrated, invariant=True), method, temperature=t,
                        calibrated=calibrated, **ident, provenance=prov)


HEAD_SCORERS = {"nq": _nq_scores, INVARIANT_SOURCE: _nq_invariant_scores, "in-domain": _in_domain_scores(None),
                "in-domain, position-matched": _in_domain_scores(POSITION_MATCHED_NEGATIVES)}
