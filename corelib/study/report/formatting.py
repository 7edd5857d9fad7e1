"""How the report prints a table and links a heading: number formats by column, Markdown tables, anchors."""

from __future__ import annotations

import pandas as pd

from ..tables import METHODS

# Columns in points of nDCG@10 (the comparisons table's and every "A - B" column) print with 2 decimals, as
# the verdicts do; percentiles with 1; a column of whole numbers (counts, layers, sets) without decimals
# unless it holds scores (nDCG@10 of a method, of a control's quantile). Everything else: 4 decimals.
POINTS_COLUMNS = {"difference", "ci low", "ci high", "detectable (80% power)"}
SCORE_COLUMNS = {*METHODS, "median", "p5", "p95", "random 8 heads (median)"}

def column_format(name: str, values: pd.Series) -> str:
    """The format a float column of a report table prints with (see the rules above)."""
    if name in POINTS_COLUMNS or " - " in name:
        return ".2f"
    if name == "percentile":
        return ".1f"
    finite = values.dropna()
    whole = len(finite) and bool((finite == finite.round()).all())
    if whole and name not in SCORE_COLUMNS and "ndcg" not in name.lower():
        return ",.0f"
    return ".4f"

def markdown_table(df: pd.DataFrame) -> str:
    cols = list(df.columns)
    formats = {c: column_format(str(c), pd.to_numeric(df[c], errors="coerce")) for c in cols}
    lines = ["| " + " | ".join(map(str, cols)) + " |", "|" + "---|" * len(cols)]
    for row in df.itertuples(index=False):
        cells = [("-" if v != v else f"{v:,.0f}" if abs(v) >= 1e5 else format(v, formats[c])) if isinstance(v, float)
                 else str(v) for c, v in zip(cols, row)]  # NaN: no test; large counts such as parameters without decimals
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)

def anchor(title: str) -> str:
    return "".join(c for c in title.lower().replace(" ", "-") if c.isalnum() or c in "-_")

def anchor_tag(title: str) -> str:
    """An explicit anchor before a heading, under the forge's slug of its title: the forge and JupyterLab's Markdown
    preview (which names a heading by its own text, and an ``id`` as ``data-jupyter-id``) both scroll to it."""
    return f'<a id="{anchor(title)}"></a>'

