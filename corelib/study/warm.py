"""The warm plan: a model's record steps (which records, in which order), running them, and what is left.

A step is data (``Step``: its kind and, for the collection steps, its collection); ``RUN`` and ``STATUS`` map
each kind to the Study call that computes its records and to the look-up that says what the cache holds of
them. ``make warm`` runs ``warm``; ``make pending`` prints ``pending``, which reads file names and a few file
headers only.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Callable

import pandas as pd

from ..niah import TrialStore, collection_haystack, trial_status
from ..records import CacheStatus, record_status
from ..rerank import detection_requests

if TYPE_CHECKING:
    from .core import Study

log = logging.getLogger(__name__)

DETECTION, CALIBRATED_DETECTION, NIAH_TRIALS = "NQ detection", "calibrated NQ detection", "needle trials"
COLLECTION, SHUFFLED = "collection", "shuffled"
SHUFFLED_SUFFIX = " (shuffled)"


@dataclass(frozen=True)
class Step:
    kind: str  # DETECTION, CALIBRATED_DETECTION, NIAH_TRIALS, COLLECTION or SHUFFLED
    collection: str | None = None

    @property
    def name(self) -> str:
        """The name ``warm --step`` and ``pending`` use: a collection's name, '<collection> (shuffled)', or the kind."""
        if self.kind == COLLECTION:
            return self.collection
        return self.collection + SHUFFLED_SUFFIX if self.kind == SHUFFLED else self.kind

    @property
    def calibrated(self) -> bool:
        """Calibrated records (one forward with the N/A suffix packed in) cost more than NQ detection records."""
        return self.kind in (CALIBRATED_DETECTION, COLLECTION, SHUFFLED)


def steps(study: "Study", model: str, multilingual: bool = True) -> list[Step]:
    """A model's record steps in the order ``warm`` runs them: NQ detection, the collections (smallest first),
    the multilingual ones, the order check's shuffled records, the calibrated detection records of the ablation
    models (notebook 9), and the needle trials."""
    p = study.p
    sizes = {c: len(study.candidates(model, c).ranking) for c in p.collections}
    by_size = sorted(p.collections, key=sizes.get)
    out = [Step(DETECTION), *(Step(COLLECTION, c) for c in by_size),
           *(Step(COLLECTION, c) for c in (p.multilingual if multilingual else ()))]
    if model in p.order_models:
        out += [Step(SHUFFLED, c) for c in by_size]
    if model in p.models_for_ablations:
        out.append(Step(CALIBRATED_DETECTION))
    if p.niah_needles:
        out.append(Step(NIAH_TRIALS))
    return out


RUN: dict[str, Callable[["Study", str, Step], list]] = {
    DETECTION: lambda s, m, step: s.detection(m),
    CALIBRATED_DETECTION: lambda s, m, step: s.detection(m, calibrate=True),
    COLLECTION: lambda s, m, step: s.records(m, step.collection),
    SHUFFLED: lambda s, m, step: s.shuffled_records(m, step.collection),
    NIAH_TRIALS: lambda s, m, step: s.niah_trials(m),
}


def _collection_status(s: "Study", m: str, step: Step) -> CacheStatus:
    shuffled = step.kind == SHUFFLED
    rr = s._reranker(m, order=s.shuffled_order if shuffled else None)
    qids = s.order_sample(m, step.collection) if shuffled else None
    return rr.status(rr.collection_requests(s.collection(step.collection), s.candidates(m, step.collection), qids))


STATUS: dict[str, Callable[["Study", str, Step], CacheStatus]] = {
    DETECTION: lambda s, m, step: record_status(s.spec(m), detection_requests(s._detection_samples(m)), calibrate=False,
                                                store=s.store),
    CALIBRATED_DETECTION: lambda s, m, step: record_status(s.spec(m), detection_requests(s._detection_samples(m)),
                                                           calibrate=True, store=s.store),
    COLLECTION: _collection_status,
    SHUFFLED: _collection_status,
    NIAH_TRIALS: lambda s, m, step: trial_status(s.spec(m), s.niah_grid(), collection_haystack(s.collection(s.p.niah_haystack)),
                                                 store=TrialStore(s.store.root)),
}


def warm(study: "Study", models=None, multilingual: bool = True, only=None) -> None:
    """Compute and cache every record the notebooks read, one model at a time, step by step (``only``: the
    steps of these names). The cache is checked writable first; stop and re-run to resume."""
    from ..storage import check_cache_writable

    check_cache_writable(study.store.root)  # before the first forward, not after it
    for m in models or study.p.models:
        plan = steps(study, m, multilingual)
        unknown = [name for name in only or () if name not in {s.name for s in plan}]
        if unknown:
            raise ValueError(f"no warm step {', '.join(map(repr, unknown))} for {m} in profile {study.p.name}; "
                             f"its steps: {', '.join(s.name for s in plan)}")
        for step in (s for s in plan if not only or s.name in only):
            t0 = time.perf_counter()
            n = len(RUN[step.kind](study, m, step))
            log.info("%s %s: %d %s (%.0f s)", m, step.name, n, "trials" if step.kind == NIAH_TRIALS else "records",
                     time.perf_counter() - t0)


def pending(study: "Study", models=None, multilingual: bool = True) -> pd.DataFrame:
    """What ``warm`` has left, per model and step: records (or trials) needed, cached and missing, and the
    time left at the median compute time of the step's cached records; for a step with none timed yet, of the
    model's other steps of the same kind (calibrated or not), else of all its other record steps (``timed on``
    says which). Records written before their files stored a time have none. A damaged file counts as cached
    until it is read."""
    nan, rows = float("nan"), []
    for m in models or study.p.models:
        statuses = {step: STATUS[step.kind](study, m, step) for step in steps(study, m, multilingual)}
        timed = {step: st.seconds for step, st in statuses.items() if step.kind != NIAH_TRIALS}
        calibrated = [t for step, ts in timed.items() if step.calibrated for t in ts]
        pooled = [t for ts in timed.values() for t in ts]
        for step, st in statuses.items():
            timed_on = "this step" if st.seconds else "-"
            if not st.seconds and st.missing and step in timed:
                if step.calibrated and calibrated:
                    st, timed_on = replace(st, seconds=calibrated), "calibrated steps"
                elif pooled:
                    st, timed_on = replace(st, seconds=pooled), "other steps"
            rows.append({"model": m, "step": step.name, "needed": st.needed, "cached": st.needed - len(st.missing),
                         "missing": len(st.missing), "s each (median)": nan if st.median_s is None else st.median_s,
                         "timed on": timed_on, "estimate (h)": nan if st.estimate_s is None else st.estimate_s / 3600})
    return pd.DataFrame(rows, columns=["model", "step", "needed", "cached", "missing", "s each (median)", "timed on",
                                       "estimate (h)"])
