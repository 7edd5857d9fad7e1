"""The explorer's backend (notebooks/explorer.ipynb): what one setting of model, method, head count and
temperature gives. ``Committed`` answers from a profile's committed tables (no record, no model: a fresh clone
shows every number the study computed); for a setting no table holds, ``cache_report`` says what a profile has
cached and what the rest would cost (from file names and a few file headers; nothing is loaded), and
``Explorer`` (memoised per study) and ``explore`` compute from records only when asked (``compute=True``), so
opening the explorer never starts forwards."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from ..evaluate import evaluate_run
from ..scoring import record_run
from .tables.sweep import sweep_curve
from .warm import time_left

if TYPE_CHECKING:
    from .core import Study



METHOD_LABELS = {"core": "CoRe-R", "qr": "QR-R", "niah": "NIAH-R"}  # the explorer's methods (the sweep's head orders)
REFERENCES = ("BM25", "Dense", "Bi-encoder", "ICR")  # reference lines: the first stages, the encoder, all heads
COMPARISON_CLAIMS = ("CoRe-R beats ICR", "CoRe-R beats QR-R", "ICR beats BM25", "ICR beats Dense", "CoRe-R beats Bi-encoder")


class NotCommitted(LookupError):
    """No committed table holds this setting (another temperature at another head count, say)."""


class Committed:
    """What a profile's committed tables hold for the explorer, read once: per model, collection and method the
    head-count curve at the profile's temperature (``sweep``), CoRe-R at each temperature of the ablation at the
    profile's head count (``ablation_temperature``), BM25, the bi-encoder and ICR (``table1``) and the verdicts of
    the main claims (``comparisons_table1``). No record is read and no model loaded."""

    def __init__(self, study: "Study"):
        t = study.tables
        self.study = study
        self.sweep = t.read("sweep")
        self.table1 = t.read("table1")
        self.temperatures = t.read("ablation_temperature")
        self.claims = t.read("comparisons_table1")
        if self.sweep is None or self.table1 is None:
            raise NotCommitted(f"profile {study.p.name} has no committed sweep and Table 1 in {study.tables_dir}: "
                               f"`make reproduce PROFILE={study.p.name}` writes them")
        self._curves = {key: g.set_index("heads")["ndcg@10"].sort_index()
                        for key, g in self.sweep.groupby(["model", "order", "collection"], sort=False)}

    @property
    def models(self) -> list[str]:
        return list(dict.fromkeys(self.table1["model"]))

    def collections(self, model: str) -> list[str]:
        return list(dict.fromkeys(self.table1.loc[self.table1["model"] == model, "collection"]))

    def methods(self, model: str) -> list[str]:
        return [m for m in METHOD_LABELS if (model, m, "mean over collections") in self._curves]

    def heads(self, model: str) -> int:
        return int(self.sweep.loc[self.sweep["model"] == model, "heads"].max())

    def view(self, model: str, method: str, k: int, temperature: float, collection: str | None = None):
        """(table, curve, note): nDCG@10 per collection (and their mean) of BM25, the bi-encoder, ICR and the
        method's top-k heads, the method's head-count curve on one collection (or the mean), and a sentence saying
        which tables the numbers come from and the verdicts of the model's main claims. Raises NotCommitted for a
        setting no table holds."""
        p = self.study.p
        label = METHOD_LABELS.get(method)
        if label is None:
            raise NotCommitted(f"method {method!r}: the explorer shows {', '.join(METHOD_LABELS)}")
        where = collection or "mean over collections"
        curve = self._curves.get((model, method, where))
        if curve is None:
            raise NotCommitted(f"no committed {label} curve of {model} on {where} in profile {p.name}")
        ref = self.table1[self.table1["model"] == model].set_index("collection")
        table = ref[[c for c in REFERENCES if c in ref and ref[c].notna().any()]].copy()
        profile_t = method == "qr" or abs(temperature - p.temperature) <= 1e-12 * p.temperature
        column = f"{label} top-{k}"
        if profile_t:
            if k not in curve.index:
                raise NotCommitted(f"{model} has {curve.index.max()} heads: k={k} is outside the committed curve")
            table[column] = [float(self._curves[model, method, c].get(k, np.nan)) for c in table.index]
            source = f"sweep (t={p.temperature:g})"
        else:
            if method != "core" or self.temperatures is None or k != p.num_heads:
                raise NotCommitted(f"{label} at t={temperature:g} is committed only as CoRe-R's top {p.num_heads} in the "
                                   f"temperature ablation (k={p.num_heads}); press compute for k={k}")
            row = self.temperatures[(self.temperatures["model"] == model)
                                    & np.isclose(self.temperatures["temperature"], temperature, rtol=1e-9)]
            if row.empty:
                raise NotCommitted(f"the temperature ablation has no t={temperature:g} for {model}; its temperatures: "
                                   + ", ".join(f"{t:g}" for t in self.temperatures["temperature"].unique()))
            table[column] = np.nan  # the ablation holds the mean over collections only
            source = f"temperature ablation (t={temperature:g}, mean over collections only)"
        table.loc["mean"] = table.mean()
        if not profile_t:
            table.loc["mean", column] = float(row["CoRe-R nDCG@10"].iloc[0])
        verdicts = "; ".join(f"{r['claim']}: {r['difference']:+.2f} points, {r['verdict']}"
                             for _, r in self._claims(model).iterrows())
        note = (f"Committed tables of profile {p.name} (no forward): {column} from the {source}, BM25, the bi-encoder "
                f"and ICR from Table 1" + (f". {model}: {verdicts}" if verdicts else ""))
        return table, (curve if profile_t else None), note

    def _claims(self, model: str) -> pd.DataFrame:
        if self.claims is None:
            return pd.DataFrame(columns=["claim", "difference", "verdict"])
        c = self.claims
        return c[(c["model"] == model) & c["claim"].isin(COMPARISON_CLAIMS)
                 & c["head source"].fillna("").isin(["nq", "all", ""])].drop_duplicates("claim")


class NotCached(LookupError):
    """The explorer was asked for a setting whose records are not cached (and not asked to compute them)."""


def model_converted(model: str) -> bool:
    """Whether a built-in model's dequantised weights are in the cache already (any other model: True)."""
    from ..catalogue import BUILTIN_MODELS
    from ..storage import cache_root

    return model not in BUILTIN_MODELS or (cache_root() / "models" / model / "corelib.json").is_file()


def cache_report(study: "Study", model: str, method: str = "core") -> tuple[bool, str]:
    """(everything cached?, a sentence saying what is cached, what is missing, the estimate and the command)."""
    table = study.pending([model], multilingual=False)
    steps = list(study.p.collections) + ["NQ detection"] + (["needle trials"] if method == "niah" else [])
    part = table[table["step"].isin(steps)]
    missing = int(part["missing"].sum())
    if not missing:
        return True, f"{model} in profile {study.p.name}: every record the explorer reads is cached."
    cost = (f" (estimated from the cached records or the cost table: {t})" if (t := time_left(part))
            else " (no cached record or cost-table row to time them by yet)")
    if not model_converted(model):
        cost += ", plus converting the model's GGUF file once (a few minutes on 2 cores)"
    return False, (f"{model} in profile {study.p.name}: {int(part['cached'].sum())} of {int(part['needed'].sum())} "
                   f"records cached, {missing} missing{cost}. Run `make warm PROFILE={study.p.name} MODEL={model}` "
                   "in a terminal (resumable), or press 'compute' to compute them in this kernel.")


class Explorer:
    """The explorer's results for one study, memoised: each model's BM25 and ICR per collection, and the
    head-count curve per model, method, temperature and collection, so that moving the heads slider or
    picking another collection scores only the k heads, and a curve over every head count (the costly part)
    is computed once per head order. QR's order ignores the temperature, so its curves are kept once."""

    def __init__(self, study: "Study"):
        self.study = study
        self._references: dict[tuple, tuple[float, float]] = {}
        self._curves: dict[tuple, np.ndarray] = {}

    def explore(self, model: str, method: str, k: int, temperature: float, collection: str | None = None,
                compute: bool = False):
        """nDCG@10 per collection of BM25, ICR and the method's top-k heads at a temperature, and the method's
        head-count curve on one collection (or the mean). With records missing it raises NotCached unless
        ``compute`` (no forward is ever started unasked). No table is written."""
        S = self.study
        if not compute:
            ready, message = cache_report(S, model, method)
            if not ready:
                raise NotCached(message)
        heads = S.heads(model, method, k, temperature)
        order_key = (model, method, None if method == "qr" else temperature)
        rows, curves = [], []
        for c in S.p.collections:
            recs, qrels = S.records(model, c), S.collection(c).qrels
            if (model, c) not in self._references:
                self._references[model, c] = (evaluate_run(S.candidates(model, c).run(), qrels)["ndcg@10"],
                                              evaluate_run(record_run(recs), qrels)["ndcg@10"])
            bm25, icr = self._references[model, c]
            rows.append({"collection": c, "BM25": bm25, "ICR": icr,
                         f"{method} top-{k}": evaluate_run(record_run(recs, heads), qrels)["ndcg@10"]})
            if collection in (None, c):
                if (*order_key, c) not in self._curves:
                    order = S.head_scores(model, method, temperature).order()
                    self._curves[(*order_key, c)] = sweep_curve(recs, order, qrels)
                curves.append(self._curves[(*order_key, c)])
        table = pd.DataFrame(rows).set_index("collection")
        table.loc["mean"] = table.mean()
        curve = np.mean(curves, axis=0)
        return table, pd.Series(curve, index=np.arange(1, len(curve) + 1), name="ndcg@10")


def explore(study: "Study", model: str, method: str, k: int, temperature: float, collection: str | None = None,
            compute: bool = False):
    """One setting of the explorer, computed afresh (``Explorer.explore``; the notebook keeps an ``Explorer``
    per profile, so that its updates reuse what does not change)."""
    return Explorer(study).explore(model, method, k, temperature, collection, compute)
