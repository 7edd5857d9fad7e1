"""Every table of the study, one module per artefact, each a plain function ``f(study, ...) -> DataFrame``
that computes a table from cached records, writes ``<name>.csv`` to the study's tables folder and returns it.

- ``schema``: the columns of every table (defined once), ``write``, ``read`` (the report reads through it) and ``read_at`` (at a git revision)
- ``inputs``: collections, prompt lengths
- ``heads``: top heads, NIAH detection, overlap, detection temperature, depth (Figure 2)
- ``table1``: the per-query table, Table 1, the paired comparisons, the in-domain head sources
- ``controls``: random head-set controls
- ``sweep``: the head-count sweep (Figure 1) and the peak test
- ``pruning``: layer pruning (Figure 3) and its margin test
- ``costs``: the measured pruning cost and a practitioner's latency
- ``scaling``: the scaling view
- ``ablations``: the reviewers' ablations

``study.tables.NAME(...)`` is ``NAME(study, ...)`` (the notebooks' calls); per-query results live in one long
table (``per_query``), so a new method, model, head source or first stage adds rows, not columns.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from . import controls, costs, heads, inputs, pruning, scaling, schema, sweep, table1
from .ablations import Ablations, length_bias, with_negatives
from .schema import COLUMNS, METHODS, base_table, columns
from .sweep import sweep_curve

if TYPE_CHECKING:
    from ..core import Study

__all__ = ["COLUMNS", "METHODS", "Ablations", "Tables", "base_table", "columns",
           "length_bias", "sweep_curve", "with_negatives"]

# name -> function(study, ...): every table builder and the per-study helpers the notebooks call
ARTEFACTS = {
    "write": schema.write, "read": schema.read, "read_at": schema.read_at,
    "collections": inputs.collections, "prompt_lengths": inputs.prompt_lengths,
    "top_heads": heads.top_heads, "head_score_maps": heads.head_score_maps, "niah_detection": heads.niah_detection,
    "overlap": heads.overlap,
    "detection_temperature": heads.detection_temperature, "depth": heads.depth,
    "per_query": table1.per_query, "table1": table1.table1, "compare": table1.compare,
    "table1_pairs": table1.table1_pairs, "comparisons": table1.comparisons,
    "table1_comparisons": table1.table1_comparisons, "table2_comparisons": table1.table2_comparisons,
    "in_domain_sources": table1.in_domain_sources, "refresh_record_free": table1.refresh_record_free,
    "control_sets": controls.control_sets, "control_counts": controls.control_counts, "controls": controls.controls,
    "sweep": sweep.sweep, "peak_test": sweep.peak_test,
    "pruning": pruning.pruning, "pruning_margin": pruning.pruning_margin,
    "pruning_cost": costs.pruning_cost, "model_pruning_cost": costs.model_pruning_cost,
    "practitioner_cost": costs.practitioner_cost, "scaling": scaling.scaling,
}


class Tables:
    """``study.tables``: the table functions bound to one study, so that a notebook writes
    ``S.tables.table1(pq)`` for ``table1.table1(S, pq)``; ``S.tables.ablations`` holds the ablations."""

    base_table = staticmethod(base_table)
    columns = staticmethod(columns)

    def __init__(self, study: "Study"):
        self.s = study
        self.p = study.p
        self.ablations = Ablations(study)

    def __getattr__(self, name: str):
        try:
            return functools.partial(ARTEFACTS[name], self.s)
        except KeyError:
            raise AttributeError(f"no table {name!r}: the study's tables are {', '.join(sorted(ARTEFACTS))}") from None

    def __dir__(self):
        return sorted({*super().__dir__(), *ARTEFACTS})

    @staticmethod
    def nq_wide(pq):
        return table1.nq_wide(pq)
