"""The paper's own models, from the head scores their authors released (no forward).

What depends only on the heads is tested on Mistral-7B, Llama-3.1-8B, Phi-4 and Granite-3.2-8B themselves:
where the top CoRe heads sit (Figure 2, the middle-third claim under the same rule as the small models), how
much of the top 8 survives each pruning level when heads are re-detected on the pruned model, and what share
of all heads the top k is (the "<1%" claim). Every row says "from released scores".
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from ..heads import RELEASED_MODELS, RELEASED_PRUNE_LEVELS, released_scores
from . import analysis
from .tables.heads import LAYER_TEST

if TYPE_CHECKING:
    from .core import Study

SOURCE = "from released scores"


def _short(model_id: str) -> str:
    return model_id.split("/")[-1]


def released_depth(study: "Study", k: int | None = None) -> pd.DataFrame:
    """The middle-third claim on the paper's models (unpruned scores), Holm over the four: table
    ``released_depth`` (the columns of ``depth``, plus where the numbers come from)."""
    k = k or study.p.num_heads
    rows = []
    for model in RELEASED_MODELS:
        s = released_scores(model, 0.0, study.data)
        top = s.table().head(k)
        layers = s.scores.shape[0]
        rows.append({"model": _short(model), "source": SOURCE, "layers": layers, "top heads": len(top),
                     "top layers": sorted(top["layer"].tolist()),
                     "in middle third": int(analysis.in_middle_third(top["layer"], layers).sum()),
                     "median relative depth": float(top["relative_depth"].median()),
                     "largest share keeping the top layers": analysis.share_keeping_layers(top["layer"], s.scores.shape[0])})
    # the test, a layer as the unit, and Holm over the four: the table's family function (tables.heads)
    return study.tables.write("released_depth", pd.DataFrame(rows).assign(**{c: np.nan for c in LAYER_TEST}, verdict=""))


def released_pruning(study: "Study", k: int | None = None) -> pd.DataFrame:
    """Per model and pruned share: the kept layers, how many of the unpruned top k sit in them, how many the
    re-detected top k shares with the unpruned top k, and the top k's share of all heads (table
    ``released_pruning``)."""
    k = k or study.p.num_heads
    rows = []
    for model in RELEASED_MODELS:
        full = released_scores(model, 0.0, study.data)
        L, H = full.scores.shape
        base = full.order()[:k]
        for prune in RELEASED_PRUNE_LEVELS:
            s = released_scores(model, prune, study.data)
            kept = s.scores.shape[0]
            top = s.order()[:k]
            rows.append({"model": _short(model), "source": SOURCE, "pruned share": prune, "kept layers": kept,
                         "layers": L, "unpruned top heads in kept layers": sum(l < kept for l, _ in base),
                         "re-detected top heads shared with unpruned": len(set(top) & set(base)),
                         "top heads": ", ".join(f"{l}-{h}" for l, h in top), "deepest top layer": max(l for l, _ in top),
                         "top-k share of all heads (%)": 100 * k / (L * H)})
    return study.tables.write("released_pruning", pd.DataFrame(rows))


def released_heatmaps(study: "Study", k: int | None = None) -> list:
    """Figure 2 for the paper's four models from their released scores (``fig2_heatmap_released_<model>``)."""
    from . import plots

    k = k or study.p.num_heads
    written = []
    for model in RELEASED_MODELS:
        s = released_scores(model, 0.0, study.data)
        title = (f"Figure 2, {_short(model)} ({SOURCE}, t={s.provenance['temperature']:g}); top {k} outlined, "
                 "middle third of depth between the dashed lines")
        ax = plots.head_heatmap(s.scores, title, s.order()[:k])
        written += plots.save(ax.figure, study.figures_dir / f"fig2_heatmap_released_{_short(model)}")
        plots.plt.close(ax.figure)
    return written


def write_all(study: "Study") -> dict[str, pd.DataFrame]:
    """Both tables and the four heat maps: ``python -m corelib.study released --profile cpu``."""
    out = {"released_depth": released_depth(study), "released_pruning": released_pruning(study)}
    released_heatmaps(study)
    return out
