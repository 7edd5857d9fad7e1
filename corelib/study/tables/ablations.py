"""The reviewers' ablations, from cached records: temperature, calibrated detection, negatives and
positions, length bias."""

from __future__ import annotations

import logging
import random
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch

from ...evaluate import evaluate_run
from ...records import QueryRecord
from ...scoring import record_run
from .schema import write

if TYPE_CHECKING:
    from ..core import Study

log = logging.getLogger(__name__)


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
    from ...scoring import doc_scores

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

    def __init__(self, study: "Study"):
        self.s, self.p = study, study.p

    def mean_ndcg(self, m: str, heads) -> float:
        return float(np.mean([evaluate_run(record_run(self.s.records(m, c), heads), self.s.collection(c).qrels)["ndcg@10"]
                              for c in self.p.collections]))

    def temperature(self, temperatures=(1e-4, 1e-3, 1e-2, 1e-1, 1.0), k: int | None = None) -> pd.DataFrame:
        # every model: it needs only the records Table 1 reads (the other ablations run on models_for_ablations)
        rows = [{"model": m, "temperature": t, "CoRe-R nDCG@10": self.mean_ndcg(m, self.s.heads(m, "core", k, t))}
                for m in self.p.models for t in temperatures]
        return write(self.s, "ablation_temperature", pd.DataFrame(rows))

    def calibrated_detection(self, k: int | None = None) -> pd.DataFrame | None:
        """CoRe and QR heads from calibrated against uncalibrated detection records; None (no table) in a profile
        without this ablation (its second detection pass; e.g. quick, to stay within an hour)."""
        if not self.p.calibrated_detection_ablation:
            log.info("profile %s has no calibrated-detection ablation (the cpu profile has it)", self.p.name)
            return None
        rows = []
        for m in self.p.models_for_ablations:
            for calibrated in (False, True):
                for method in ("core", "qr"):
                    s = self.s.head_scores(m, method, calibrated=calibrated)
                    rows.append({"model": m, "method": method, "calibrated detection": calibrated,
                                 "nDCG@10": self.mean_ndcg(m, s.order()[: k or self.p.num_heads])})
        return write(self.s, "ablation_calibrated_detection", pd.DataFrame(rows))

    def negatives_positions(self, negatives=(1, 3, 7, 19), k: int | None = None) -> pd.DataFrame:
        from ...heads import detect_heads

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
        return write(self.s, "ablation_negatives_positions", pd.DataFrame(rows))

    def length_bias(self, k: int | None = None) -> pd.DataFrame:
        rows = []
        for m in self.p.models_for_ablations:
            sets = {"ICR": None, "QR-R": self.s.heads(m, "qr", k), "CoRe-R": self.s.heads(m, "core", k)}
            for c in self.p.collections:
                recs = self.s.records(m, c)
                rows += [{"model": m, "collection": c, "method": method, **length_bias(recs, heads)} for method, heads in sets.items()]
        return write(self.s, "ablation_length_bias", pd.DataFrame(rows))
