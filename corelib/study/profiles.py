"""The study's settings: one Profile per reproduction run, fixed before any test number was looked at."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from ..errors import UsageError
from ..catalogue import DEFAULT_MODEL


@dataclass(frozen=True)
class Profile:
    """Sizes of one reproduction run."""

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
    # the ablation that runs NQ detection once more with calibration (a second detection pass per ablation model)
    calibrated_detection_ablation: bool = True
    seed: int = 0
    queries_by_model: tuple[tuple[str, int | None], ...] = ()  # (model, queries) overriding ``queries``
    # (model, n): a collection with at most n judged test queries is evaluated whole for that model, whatever its
    # per-collection size (a stratified sample: every query of the small collections, a seeded part of the large)
    whole_up_to_by_model: tuple[tuple[str, int], ...] = ()
    multilingual_queries: tuple[tuple[str, int | None], ...] = ()  # (model, queries) on the multilingual sets
    detection_by_model: tuple[tuple[str, int], ...] = ()  # (model, NQ detection queries) overriding detection_samples
    # (model, dtype) where a model's records are not computed in the default dtype (fp32 on a CPU, bf16 on a
    # GPU); a bf16 CPU row needs the precision check of the analysis plan first
    dtype_by_model: tuple[tuple[str, str], ...] = ()
    control_sets: int = 1000  # random head sets per control distribution
    first_stage: str = "bm25"  # where the candidates come from: bm25 (run file or bm25s) or dense (the encoder)
    encoder: str = "minilm-l6"  # sentence encoder of the dense first stage and of the bi-encoder baseline
    # NIAH-R detection (Wu et al.): the first n of niah.NEEDLES, each at every context length (tokens) and
    # depth, in a haystack of a collection no evaluated set uses; None = no NIAH-R in this profile
    niah_needles: int | None = 4
    niah_lengths: tuple[int, ...] = (1000, 2000)
    niah_depths: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
    niah_haystack: str = "adi"
    # a second needle grid (same needles and depths) at the re-ranking prompts' length, in tokens: its heads are
    # the method NIAH-R (prompt length), beside NIAH-R's from ``niah_lengths``; () = none
    niah_prompt_lengths: tuple[int, ...] = ()
    # The candidate-order check: the same candidates in a seeded random order per query (heads unchanged), for
    # these models, on a stratified part of each model's query sample: every query of a collection whose sample
    # has at most ``order_all_up_to`` queries, ``order_queries`` (a seeded subset) of each larger one
    order_models: tuple[str, ...] = ()
    order_queries: int = 64
    order_all_up_to: int = 100
    order_seed: int = 0
    # The order remedies (``order_remedies``) on the order check's queries of every order model: the position prior
    # (from the calibrated NQ detection records), the permutation-invariant prompt (heads detected on NQ under it)
    # and permutation aggregation over each of ``order_permutations`` orders (the given order and K - 1 shuffles
    # seeded order_seed + 1 ..; () = no aggregation)
    order_remedies: bool = False
    order_permutations: tuple[int, ...] = ()
    # where the detected head rankings go, under the results directory (None: <profile>/heads)
    heads_dir: str | None = None
    hours: str = ""  # measured (or estimated) duration of `make reproduce` on a 2-core CPU, for the banner

    def __post_init__(self):
        from ..checks import positive_finite, whole_number

        whole_number(self.queries, "queries", allow_none=True)
        for name in ("top_k", "words", "detection_samples", "negatives", "positions", "num_heads", "control_sets",
                     "order_queries"):
            whole_number(getattr(self, name), name)
        whole_number(self.order_all_up_to, "order_all_up_to", minimum=0)
        for k in self.order_permutations:
            whole_number(k, "order_permutations", minimum=2)
        if self.positions > self.negatives + 1:
            raise UsageError(f"positions={self.positions}: at most negatives + 1 = {self.negatives + 1} slots for the positive")
        positive_finite(self.temperature, "temperature", " (the paper uses 0.001 or 0.1)")
        for model, n in (*self.queries_by_model, *self.multilingual_queries):
            whole_number(n, f"queries for {model}", allow_none=True)
        for model, n in self.detection_by_model:
            whole_number(n, f"detection queries for {model}")
        for model, n in self.whole_up_to_by_model:
            whole_number(n, f"whole collections up to n queries for {model}")
        if not self.models:
            raise UsageError(f"profile {self.name!r} has no model: name at least one")
        if not self.collections:
            raise UsageError(f"profile {self.name!r} has no collection: name at least one")
        bad = [p for p in self.prune_levels if not 0 <= p < 1]
        if bad:
            raise UsageError(f"prune_levels {bad}: a pruned share must be in [0, 1)")
        unknown = sorted(set(self.order_models) - set(self.models))
        if unknown:
            raise UsageError(f"order_models {unknown} are not models of profile {self.name!r} ({', '.join(self.models)})")

    @property
    def heads_folder(self) -> str:
        return self.heads_dir or f"{self.name}/heads"

    @property
    def models_for_ablations(self) -> tuple[str, ...]:
        """The models the ablations run on: ``ablation_models`` among the profile's models (a profile narrowed to
        other models runs none)."""
        return self.models if self.ablation_models is None else tuple(m for m in self.ablation_models if m in self.models)

    @property
    def scored_first_stages(self) -> tuple[str, ...]:
        """The first stages whose own top-k Table 1 scores: BM25 always; the dense stage only in a profile that
        re-ranks its candidates (encoding a whole corpus is the slowest step of a profile that does not)."""
        return ("bm25",) if self.first_stage == "bm25" else ("bm25", self.first_stage)

    def queries_for(self, model: str, collection: str | None = None, judged: int | None = None) -> int | None:
        """Sampled queries per collection for a model (the multilingual sets have their own sizes); None: all.
        ``judged``: the collection's judged test queries, for a model that takes small collections whole."""
        table = self.multilingual_queries if collection in self.multilingual else self.queries_by_model
        n = dict(table).get(model, self.queries)
        whole = dict(self.whole_up_to_by_model).get(model)
        if whole is not None and collection not in self.multilingual and judged is not None and judged <= whole:
            return None
        return n

    def expected_queries(self, model: str, judged: dict[str, int]) -> int:
        """Evaluated queries of a model over the profile's (monolingual) collections, given each one's judged
        test queries (the collections table's column)."""
        total = 0
        for c in self.collections:
            n = self.queries_for(model, c, judged[c])
            total += judged[c] if n is None else min(n, judged[c])
        return total

    def dtype_for(self, model: str) -> str | None:
        """The dtype a model's records are computed in (None: the default, fp32 on a CPU, bf16 on a GPU)."""
        return dict(self.dtype_by_model).get(model)

    def detection_for(self, model: str | None) -> int:
        """NQ detection queries for a model (a larger model may use fewer)."""
        return dict(self.detection_by_model).get(model, self.detection_samples)

    def skipped_notebooks(self) -> dict[str, str]:
        """Notebooks (by file stem) that do not apply to this profile, with the reason ``make reproduce`` prints."""
        skipped = {}
        if not self.multilingual:
            skipped["08_table2_multilingual"] = f"profile {self.name} has no multilingual collections"
        if not (self.order_models and self.order_remedies):
            skipped["11_candidate_order"] = f"profile {self.name} runs no candidate-order remedies"
        return skipped

    def _sample(self, model: str | None) -> str:
        q = self.queries_for(model) if model else self.queries
        whole = dict(self.whole_up_to_by_model).get(model) if model else None
        whole = f" (every query of a collection with at most {whole})" if whole is not None else ""
        return f"{f'up to {q}' if q else 'all'} queries/collection{whole}"

    def detection_setting(self, model: str | None) -> str:
        """The detection set of ``model``'s run, in words."""
        return f"detection {self.detection_for(model)} NQ queries x {self.positions} positions"

    def candidate_setting(self) -> str:
        """The candidates every model re-ranks, in words."""
        stage = self.first_stage.upper() + (f" ({self.encoder})" if self.first_stage == "dense" else "")
        return f"top-{self.top_k} {stage} candidates, {self.words} words/doc"

    def _dtype(self, model: str | None) -> str:
        return f"{self.dtype_for(model)} records" if model and self.dtype_for(model) else ""

    def _common(self) -> tuple[str, str]:
        """What every model shares: (candidates and words, negatives, temperature and needle grids)."""
        niah = (f"; NIAH {self.niah_needles} needles x {len(self.niah_lengths)} lengths {list(self.niah_lengths)} x "
                f"{len(self.niah_depths)} depths in {self.niah_haystack.upper()}" if self.niah_needles else "")
        if self.niah_needles and self.niah_prompt_lengths:
            niah += f" (and at the prompts' length, {list(self.niah_prompt_lengths)})"
        return self.candidate_setting(), f"{self.negatives} negatives, t={self.temperature}{niah}"

    def sizes(self, model: str | None = None) -> str:
        """Every size of one model's run (the profile's defaults when ``model`` is None)."""
        head, tail = self._common()
        dtype = f"; {self._dtype(model)}" if self._dtype(model) else ""
        return f"{head}, {self._sample(model)}; {self.detection_setting(model)}, {tail}{dtype}"

    def summary(self, models=None) -> str:
        """The sizes of a run of ``models`` (default: the profile's), what they share once and each model's own
        sample, detection set and dtype where the models differ in them."""
        models = tuple(models or self.models)
        head, tail = self._common()
        parts = {m: (self._sample(m), self.detection_setting(m), self._dtype(m)) for m in models}
        if len(set(parts.values())) == 1:
            return self.sizes(models[0])
        shared = [len({v[i] for v in parts.values()}) == 1 for i in range(3)]  # the same for every model
        common = [parts[models[0]][i] for i in range(3) if shared[i] and parts[models[0]][i]]
        own = "; ".join(f"{m} {', '.join(x for i, x in enumerate(parts[m]) if x and not shared[i])}" for m in models)
        return f"{head}; {'; '.join([*common, tail])}; per model: {own}"


COLLECTIONS_CPU = ("scifact", "arguana", "cranfield", "cisi", "med", "npl", "lisa")
XQUAD = ("xquad-r/de", "xquad-r/en", "xquad-r/es")

PROFILES: dict[str, Profile] = {
    # CI: every notebook's code path in a few minutes
    "smoke": Profile("smoke", (DEFAULT_MODEL,), ("scifact", "cranfield"), top_k=8, words=40, queries=4,
                     detection_samples=4, negatives=7, positions=2, temperature=0.001,
                     prune_levels=(0.0, 0.5), multilingual=("xquad-r/de",), control_sets=50,
                     niah_needles=1, niah_lengths=(300,), niah_depths=(0.0, 1.0), niah_prompt_lengths=(600,),
                     order_models=(DEFAULT_MODEL,), order_remedies=True, order_permutations=(3,),
                     order_queries=3, order_all_up_to=2, hours="~4 min"),
    # `make reproduce` with no PROFILE: every table and figure for the default model within an hour from a cold cache
    # (the calibrated-detection ablation, a second detection pass, is the cpu profile's).
    # Its prompts are a subset of the cpu profile's; it runs in fp32, the cpu profile runs this model in bf16.
    "quick": Profile("quick", (DEFAULT_MODEL,), COLLECTIONS_CPU, top_k=20, words=100, queries=30,
                     detection_samples=60, negatives=19, positions=2, temperature=0.001,
                     multilingual=XQUAD, multilingual_queries=((DEFAULT_MODEL, 10),), calibrated_detection_ablation=False,
                     hours="about 50 min from a cold cache, setup included (see results/quick/README.md)"),
    # Every judged test query up to 300 per collection (~1,060 per model) for the two smallest models, so that
    # a 0.75-point difference is detectable; qwen 0.5b keeps 30 per collection; qwen 1.5b, the one model whose
    # ICR is above BM25, 426 (every query of MED, LISA, CISI and NPL, 64 of each other collection). smollm2 and the
    # 1.5B run in bf16, which their precision checks allowed (results/cpu/tables/precision.csv: smollm2 on its 1,059
    # fp32 queries, the 1.5B on its first 105). qwen 0.5b's check failed (ICR: 93% of its queries within 0.05, the
    # rule asks 95%), and so did gemma3's (CoRe-R vs QR-R with in-domain heads: contradicted in fp32, inconclusive
    # in bf16; every mean within 0.12 point, 98% of queries within 0.05), so both stay in fp32. Record costs per
    # model, kind and dtype: results/record_costs.csv.
    "cpu": Profile("cpu", (DEFAULT_MODEL, "gemma3-270m", "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"), COLLECTIONS_CPU,
                   top_k=20, words=100, queries=30, detection_samples=100, negatives=19, positions=2, temperature=0.001,
                   multilingual=XQUAD, ablation_models=(DEFAULT_MODEL,), niah_prompt_lengths=(3500,),
                   queries_by_model=((DEFAULT_MODEL, 300), ("gemma3-270m", 300), ("qwen2.5-coder-1.5b", 64)),
                   whole_up_to_by_model=(("qwen2.5-coder-1.5b", 100),),
                   dtype_by_model=((DEFAULT_MODEL, "bfloat16"), ("qwen2.5-coder-1.5b", "bfloat16")),
                   multilingual_queries=((DEFAULT_MODEL, 50), ("qwen2.5-coder-1.5b", 10)),
                   # 426 queries each: NPL 93, CISI 76, LISA 35, MED 30 whole; 64 of SciFact, ArguAna, Cranfield
                   order_models=(DEFAULT_MODEL, "gemma3-270m"), order_remedies=True, order_permutations=(3, 5),
                   heads_dir="heads",  # results/heads: the CLI's default --heads-dir reads the cpu profile's rankings
                   hours="many hours of forwards: run `make warm PROFILE=cpu` (resumable) and `make time-pruning PROFILE=cpu` "
                         "(~35 min) first; then about 15 min of notebooks per model"),
    # The default model on dense (minilm-l6) candidates at the cpu profile's query sample, in bf16 as in the cpu
    # profile (its precision check there passed: same model, prompt format and sizes), so that the two first stages'
    # rows of this model compare in one dtype.
    "cpu-dense": Profile("cpu-dense", (DEFAULT_MODEL,), COLLECTIONS_CPU, top_k=20, words=100, queries=300,
                         detection_samples=100, negatives=19, positions=2, temperature=0.001, first_stage="dense",
                         dtype_by_model=((DEFAULT_MODEL, "bfloat16"),),
                         hours="about 1 h of forwards and corpus encoding: run `make warm PROFILE=cpu-dense` (resumable) first; "
                               "then about 15 min of notebooks"),
    # For a GPU and the hub. The shipped NQ detection set has 29 negatives per query (the paper: 49).
    # CQADupStack is left out: BEIR averages its 12 forums into one score, which the per-collection
    # average here would not do. MS MARCO is scored on its dev split, as in BEIR.
    "paper": Profile("paper", ("mistralai/Mistral-7B-Instruct-v0.2", "meta-llama/Llama-3.1-8B-Instruct",
                               "ibm-granite/granite-3.2-8b-instruct", "microsoft/phi-4"),
                     ("trec-covid", "nfcorpus", "dbpedia-entity", "scifact", "scidocs", "fiqa", "nq", "fever",
                      "climate-fever", "hotpotqa", "webis-touche2020", "msmarco", "quora", "arguana"),
                     top_k=40, words=300, queries=None, detection_samples=1000,
                     negatives=29, positions=5, temperature=0.001,
                     multilingual=tuple(f"mldr/{l}" for l in ("de", "en", "es", "fr", "it", "pt")),
                     niah_lengths=(1000, 2000, 4000), first_stage="dense",
                     encoder="ibm-granite/granite-embedding-125m-english", hours="GPU hours"),
}


@dataclass(frozen=True)
class ModelFacts:
    """What differs between the study's models besides size (for the scaling view), from their GGUF metadata.
    The size itself is counted from each model's config (``Study.parameter_count``)."""

    family: str
    tuning: str
    weights: str  # the weight files; the scaling view adds the dtype the forward runs in


MODEL_FACTS: dict[str, ModelFacts] = {
    "smollm2-135m": ModelFacts("SmolLM2 (Llama architecture)", "instruct (GGUF finetune tag 8k-lc100k-mix1-ep2)",
                               "GGUF Q4_1, dequantised"),
    "gemma3-270m": ModelFacts("Gemma 3 (15 of 18 layers: 512-token sliding window)",
                              "base (no finetune in its GGUF metadata)", "GGUF Q4_K_M, dequantised"),
    "qwen2.5-coder-0.5b": ModelFacts("Qwen2.5-Coder", "instruct", "GGUF Q4_K_M converted from an AWQ checkpoint, dequantised"),
    "qwen2.5-coder-1.5b": ModelFacts("Qwen2.5-Coder", "instruct", "GGUF Q4_K_M, dequantised"),
}


def profile(name: str | Profile, **overrides) -> Profile:
    """A profile by name (or a Profile), with fields overridden. Narrowing ``models`` narrows the models of
    the candidate-order check with it (it runs on the profile's models that remain)."""
    if isinstance(name, Profile):
        base = name
    elif name in PROFILES:
        base = PROFILES[name]
    else:
        raise UsageError(f"unknown profile {name!r}: use one of {sorted(PROFILES)}")
    from dataclasses import fields

    unknown = sorted(set(overrides) - {f.name for f in fields(Profile)})
    if unknown:
        raise UsageError(f"unknown profile setting(s) {unknown}: a profile's settings are "
                         f"{', '.join(f.name for f in fields(Profile))}")
    if "models" in overrides and "order_models" not in overrides:
        overrides["order_models"] = tuple(m for m in base.order_models if m in overrides["models"])
    return replace(base, **overrides)


def narrowed(p: Profile, models) -> Profile:
    """``p`` with only ``models``, which must be some of its own (`make ... MODEL=`, ``Study(models=)``)."""
    unknown = sorted(set(models) - set(p.models))
    if unknown:
        raise UsageError(f"{unknown} not in profile {p.name!r} (its models: {', '.join(p.models)})")
    return profile(p, models=tuple(models))


def kept_layers(total: int, prune: float) -> int:
    """Layers kept when the last share ``prune`` is pruned: int(L * (1 - p)), as the authors' code does."""
    if not 0 <= prune < 1:
        raise UsageError(f"prune={prune}: the pruned share must be in [0, 1)")
    return max(1, math.floor(round(total * (1 - prune), 6)))
