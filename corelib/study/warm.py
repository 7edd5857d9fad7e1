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

from ..errors import UsageError
from ..niah import TrialStore, collection_haystack, trial_status
from ..prompts import CandidateOrder
from ..records import CacheStatus, record_status
from ..rerank import detection_requests

if TYPE_CHECKING:
    from .core import Study

log = logging.getLogger(__name__)

DETECTION, CALIBRATED_DETECTION, NIAH_TRIALS = "NQ detection", "calibrated NQ detection", "needle trials"
INVARIANT_DETECTION = "NQ detection (invariant prompt)"
NIAH_PROMPT_TRIALS = "needle trials (prompt length)"
TRIALS = (NIAH_TRIALS, NIAH_PROMPT_TRIALS)  # steps of needle trials, not records
COLLECTION, SHUFFLED, INVARIANT = "collection", "shuffled", "invariant prompt"
SHUFFLED_SUFFIX = " (shuffled)"


@dataclass(frozen=True)
class Step:
    kind: str  # DETECTION, CALIBRATED_DETECTION, INVARIANT_DETECTION, NIAH_TRIALS, COLLECTION, SHUFFLED or INVARIANT
    collection: str | None = None
    seed: int | None = None  # SHUFFLED: another shuffle than the order check's (permutation aggregation)

    @property
    def name(self) -> str:
        """The name ``warm --step`` and ``pending`` use: a collection's name, '<collection> (shuffled)',
        '<collection> (shuffled, seed 2)', '<collection> (invariant prompt)', or the kind."""
        if self.kind == COLLECTION:
            return self.collection
        if self.kind == SHUFFLED:
            return self.collection + (SHUFFLED_SUFFIX if self.seed is None else f" (shuffled, seed {self.seed})")
        return f"{self.collection} ({INVARIANT})" if self.kind == INVARIANT else self.kind

    @property
    def calibrated(self) -> bool:
        """Calibrated records (one forward with the N/A suffix packed in) cost more than NQ detection records."""
        return self.kind in (CALIBRATED_DETECTION, COLLECTION, SHUFFLED, INVARIANT)


def steps(study: "Study", model: str, multilingual: bool = True) -> list[Step]:
    """A model's record steps in the order ``warm`` runs them: NQ detection, the collections (smallest first),
    the multilingual ones, the order check's shuffled records, the calibrated detection records of the ablation
    models (notebook 9), and the needle trials."""
    p = study.p
    sizes = {c: len(study.query_ids(model, c)) for c in p.collections}
    by_size = sorted(p.collections, key=sizes.get)
    out = [Step(DETECTION), *(Step(COLLECTION, c) for c in by_size),
           *(Step(COLLECTION, c) for c in (p.multilingual if multilingual else ()))]
    remedies = model in p.order_models and p.order_remedies
    if model in p.order_models:
        out += [Step(SHUFFLED, c) for c in by_size]
    if (model in p.models_for_ablations and p.calibrated_detection_ablation) or remedies:
        out.append(Step(CALIBRATED_DETECTION))  # the ablation's second detection pass; the position prior's data
    if remedies:  # the order remedies: the invariant prompt's detection and records, then the extra orders
        out += [Step(INVARIANT_DETECTION), *(Step(INVARIANT, c) for c in by_size)]
        out += [Step(SHUFFLED, c, seed) for seed in study.remedy_seeds() for c in by_size]
    if p.niah_needles:
        out.append(Step(NIAH_TRIALS))
        if p.niah_prompt_lengths:
            out.append(Step(NIAH_PROMPT_TRIALS))
    return out


RUN: dict[str, Callable[["Study", str, Step], list]] = {
    DETECTION: lambda s, m, step: s.detection(m),
    CALIBRATED_DETECTION: lambda s, m, step: s.detection(m, calibrate=True),
    COLLECTION: lambda s, m, step: s.records(m, step.collection),
    SHUFFLED: lambda s, m, step: s.shuffled_records(m, step.collection, step.seed),
    INVARIANT: lambda s, m, step: s.invariant_records(m, step.collection),
    INVARIANT_DETECTION: lambda s, m, step: s.detection(m, invariant=True),
    NIAH_TRIALS: lambda s, m, step: s.niah_trials(m),
    NIAH_PROMPT_TRIALS: lambda s, m, step: s.niah_trials(m, prompt_length=True),
}


def _collection_status(s: "Study", m: str, step: Step) -> CacheStatus:
    sample = step.kind in (SHUFFLED, INVARIANT)  # the order check's queries
    if not s.candidates_cached(step.collection):  # a dense corpus not encoded yet: without its candidates no record
        # can be looked up, so every one counts as missing (encoding it here would take minutes per corpus)
        qids = s.order_sample(m, step.collection) if sample else s.query_ids(m, step.collection)
        return CacheStatus(len(qids), qids, [])
    order = None
    if step.kind == SHUFFLED:
        order = s.shuffled_order if step.seed is None else CandidateOrder(shuffle_seed=step.seed)
    rr = s.reranker(m, order=order, invariant=step.kind == INVARIANT)
    qids = s.order_sample(m, step.collection) if sample else None
    return rr.status(rr.collection_requests(s.collection(step.collection), s.candidates(m, step.collection), qids))


STATUS: dict[str, Callable[["Study", str, Step], CacheStatus]] = {
    DETECTION: lambda s, m, step: record_status(s.spec(m), detection_requests(s.detection_samples(m)), calibrate=False,
                                                store=s.store),
    CALIBRATED_DETECTION: lambda s, m, step: record_status(s.spec(m), detection_requests(s.detection_samples(m)),
                                                           calibrate=True, store=s.store),
    INVARIANT_DETECTION: lambda s, m, step: record_status(
        s.spec(m), detection_requests(s.detection_samples(m), invariant=True), calibrate=False, store=s.store),
    COLLECTION: _collection_status,
    SHUFFLED: _collection_status,
    INVARIANT: _collection_status,
    **{kind: lambda s, m, step: trial_status(s.spec(m), s.niah_grid(step.kind == NIAH_PROMPT_TRIALS),
                                             collection_haystack(s.collection(s.p.niah_haystack)),
                                             store=TrialStore(s.store.root)) for kind in TRIALS},
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
            raise UsageError(f"no warm step {', '.join(map(repr, unknown))} for {m} in profile {study.p.name}; "
                             f"its steps: {', '.join(s.name for s in plan)}")
        for step in (s for s in plan if not only or s.name in only):
            t0 = time.perf_counter()
            n = len(RUN[step.kind](study, m, step))
            log.info("%s %s: %d %s (%.0f s)", m, step.name, n, "trials" if step.kind in TRIALS else "records",
                     time.perf_counter() - t0)


# ----------------------------------------------------------------------------- record costs

COSTS_FILE = "record_costs.csv"  # under the results directory: what ``pending`` estimates a cold cache from
COST_COLUMNS = ("model", "kind", "dtype", "records timed", "seconds each (median)", "machine", "measured")
CALIBRATED, UNCALIBRATED = "calibrated record", "NQ detection record"


TRIAL_KINDS = {NIAH_TRIALS: "needle trial", NIAH_PROMPT_TRIALS: "needle trial (prompt length)"}


def _cost_kind(step: Step) -> str:
    """The cost table's kind of a step's records: calibrated, NQ detection, or a needle grid's trial (decoding
    included, so a trial costs more than a record of its length)."""
    return TRIAL_KINDS.get(step.kind) or (CALIBRATED if step.calibrated else UNCALIBRATED)


def _dtype(study: "Study", model: str) -> str:
    return study.p.dtype_for(model) or "default"


def this_machine() -> str:
    """The cost table's name for this machine: its core count and CPU model."""
    import os

    from .timing import machine_key

    return f"{os.cpu_count()} CPU cores ({machine_key()['cpu']})"


def record_costs(study: "Study", models=None) -> pd.DataFrame:
    """The median compute time of each model's cached records, per kind (calibrated, NQ detection, and the
    needle trials of each grid), read from the record and trial files (the cost table ``pending`` falls back on)."""
    import datetime

    machine = this_machine()
    rows = []
    for m in models or study.p.models:
        times: dict[str, list[float]] = {}
        for step in steps(study, m):
            times.setdefault(_cost_kind(step), []).extend(STATUS[step.kind](study, m, step).seconds)
        for kind, ts in times.items():
            if ts:
                rows.append({"model": m, "kind": kind, "dtype": _dtype(study, m), "records timed": len(ts),
                             "seconds each (median)": float(pd.Series(ts).median()), "machine": machine,
                             "measured": datetime.date.today().isoformat()})
    return pd.DataFrame(rows, columns=list(COST_COLUMNS))


def write_record_costs(study: "Study", models=None):
    """Merge ``record_costs`` into the committed cost table (``results/record_costs.csv``): the rows of the
    models and kinds measured now replace their older rows from this machine; another machine's stay."""
    from ..storage import atomic_write_text

    key = ["model", "kind", "dtype", "machine"]
    new = record_costs(study, models)
    path = study.out / COSTS_FILE
    if path.is_file():
        old = pd.read_csv(path)
        keep = ~old.set_index(key).index.isin(new.set_index(key).index)
        new = pd.concat([old[keep], new], ignore_index=True)
    new = new.sort_values(key).reset_index(drop=True)
    atomic_write_text(path, new.to_csv(index=False))
    return path, new


@dataclass(frozen=True)
class Cost:
    """A row of the committed cost table: seconds per record (or trial), and where and when they were measured."""
    seconds: float
    machine: str
    measured: str

    @property
    def source(self) -> str:
        return f"cost table ({self.measured})"


def committed_costs(study: "Study") -> dict[tuple[str, str, str], Cost]:
    """(model, kind, dtype) -> ``Cost`` from the committed cost table: this machine's row where it has one, else
    the most recently measured."""
    path = study.out / COSTS_FILE
    if not path.is_file():
        return {}
    df = pd.read_csv(path).assign(here=lambda d: d["machine"] == this_machine())
    df = df.sort_values(["here", "measured"], kind="stable")  # the preferred row last: it wins below
    return {(r["model"], r["kind"], r["dtype"]): Cost(float(r["seconds each (median)"]), r["machine"], r["measured"])
            for _, r in df.iterrows()}


def _kind_ratio(costs: dict, model: str, dtype: str, kind: str, other: str) -> float | None:
    """How much a record of ``kind`` costs against one of ``other`` for a model, from the cost table's two rows
    when one machine measured both (a ratio of two kinds holds across machines where their paces do not)."""
    a, b = costs.get((model, kind, dtype)), costs.get((model, other, dtype))
    return a.seconds / b.seconds if a and b and a.machine == b.machine else None


def time_left(steps: pd.DataFrame) -> str:
    """The time the missing records and trials of some rows of a ``pending`` table take at their estimated pace
    (the model's cached records, else the committed cost table), with the count of those no timing covers yet
    (a needle grid the cost table has no row for) said apart rather than left out of the sum, and the machine
    of any cost row timed on another CPU; empty when none is timed."""
    left = steps[steps["missing"] > 0]
    timed = left[left["estimate (h)"].notna()]
    untimed = int(left.loc[left["estimate (h)"].isna(), "missing"].sum())
    if timed.empty:
        return ""
    share = f" for {int(timed['missing'].sum())} of them" if untimed else ""
    rest = f"; {untimed} not timed yet" if untimed else ""
    hours = timed["estimate (h)"].sum()
    span = f"~{hours:.1f} h" if hours >= 1 else f"~{max(1, round(60 * hours))} min"
    # a cost row timed on another CPU holds for that CPU only (smollm2-135m's bf16 NQ detection record: 0.92 s
    # on an Intel Xeon with AMX, 2.5 s on an AMD EPYC without)
    elsewhere = sorted(set(timed["cost machine"]) - {"", this_machine()})
    other = f"; cost table timed on {' and '.join(elsewhere)}, not this machine" if elsewhere else ""
    return f"{span}{share}{rest}{other}"


def left_summary(table: pd.DataFrame) -> str:
    """One phrase per model with something missing in a ``pending`` table: how many records and trials, and
    how long they take (``time_left``)."""
    parts = []
    for m, g in table.groupby("model", sort=False):
        if missing := int(g["missing"].sum()):
            parts.append(f"{m} {missing}" + (f" ({t})" if (t := time_left(g)) else ""))
    return "; ".join(parts)


def pending(study: "Study", models=None, multilingual: bool = True) -> pd.DataFrame:
    """What ``warm`` has left, per model and step: records (or trials) needed, cached and missing, and the
    time left at the median compute time of the step's cached records; for a step with none timed yet, of the
    model's other steps of the same kind (calibrated or not), else of all its other record steps (scaled by the
    cost table's ratio of the two kinds where one machine timed both; ``timed on`` says which), else of the
    committed cost table (``record_costs``; a cold cache, and needle trials not timed yet), whose row's CPU
    ``cost machine`` names (empty for a pace timed here). Records written before their files stored a time have
    none. A damaged file counts as cached until it is read."""
    nan, rows = float("nan"), []
    costs = committed_costs(study)
    for m in models or study.p.models:
        statuses = {step: STATUS[step.kind](study, m, step) for step in steps(study, m, multilingual)}
        timed = {step: st.seconds for step, st in statuses.items() if step.kind not in TRIALS}
        calibrated = [t for step, ts in timed.items() if step.calibrated for t in ts]
        pooled = [t for ts in timed.values() for t in ts]
        for step, st in statuses.items():
            timed_on, machine = ("this step" if st.seconds else "-"), ""
            if not st.seconds and st.missing:
                record = step in timed  # a needle trial decodes: no record's time stands in for it
                if record and step.calibrated and calibrated:
                    st, timed_on = replace(st, seconds=calibrated), "calibrated steps"
                elif record and pooled:
                    # the other kind's pace here (calibrated records cost ~1.3-1.5x NQ detection ones), scaled by
                    # the cost table's ratio of the two kinds where it has one
                    other = UNCALIBRATED if step.calibrated else CALIBRATED
                    ratio = _kind_ratio(costs, m, _dtype(study, m), _cost_kind(step), other)
                    st = replace(st, seconds=[t * (ratio or 1.0) for t in pooled])
                    timed_on = "other steps" + (f" x {ratio:.2f} (cost table)" if ratio else "")
                elif (cost := costs.get((m, _cost_kind(step), _dtype(study, m)))) is not None:
                    st, timed_on, machine = replace(st, seconds=[cost.seconds]), cost.source, cost.machine
            rows.append({"model": m, "step": step.name, "needed": st.needed, "cached": st.needed - len(st.missing),
                         "missing": len(st.missing), "s each (median)": nan if st.median_s is None else st.median_s,
                         "timed on": timed_on, "cost machine": machine,
                         "estimate (h)": nan if st.estimate_s is None else st.estimate_s / 3600})
    return pd.DataFrame(rows, columns=["model", "step", "needed", "cached", "missing", "s each (median)", "timed on",
                                       "cost machine", "estimate (h)"])
