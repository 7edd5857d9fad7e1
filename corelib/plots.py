"""Figures of the study (seaborn/matplotlib), each saved as PNG and PDF."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
import torch


def save(fig, path_without_suffix: str | Path) -> list[Path]:
    """Write ``<path>.png`` and ``<path>.pdf``; dots in the name (``qwen2.5-...``) are kept."""
    path = Path(path_without_suffix)
    path.parent.mkdir(parents=True, exist_ok=True)
    written = [path.parent / f"{path.name}{suffix}" for suffix in (".png", ".pdf")]
    for out in written:
        fig.savefig(out, bbox_inches="tight", dpi=150)
    return written


def head_heatmap(scores: torch.Tensor, title: str, top: list[tuple[int, int]] = (), ax=None):
    """Layer x head map of a head score (Figure 2); top heads outlined."""
    ax = ax or plt.subplots(figsize=(max(4, scores.shape[1] * 0.4), max(4, scores.shape[0] * 0.22)))[1]
    sns.heatmap(scores.numpy(), ax=ax, cmap="viridis", cbar_kws={"label": "score"})
    for l, h in top:
        ax.add_patch(plt.Rectangle((h, l), 1, 1, fill=False, edgecolor="red", lw=1.5))
    ax.set(xlabel="head", ylabel="layer", title=title)
    return ax


def head_count_sweep(curves: pd.DataFrame, icr: float, title: str, ax=None):
    """nDCG@10 against heads added in score order (Figure 1); peak marked, ICR as a line."""
    ax = ax or plt.subplots(figsize=(6, 3.5))[1]
    for name in curves.columns:
        s = curves[name].dropna()
        ax.plot(s.index, s.values, label=name)
        k = int(s.idxmax())
        ax.scatter([k], [s.max()], zorder=3)
        ax.annotate(f"peak {s.max():.3f} @ {k}", (k, s.max()), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.axhline(icr, color="grey", ls="--", label="ICR (all heads)")
    ax.set(xscale="log", xlabel="number of heads (score order)", ylabel="nDCG@10", title=title)
    ax.legend(fontsize=8)
    return ax


def pruning(df: pd.DataFrame, title: str):
    """nDCG@10 by pruned share (Figure 5), and beside it the measured latency and peak-memory ratios
    of the pruned forward to the unpruned one when the table has them."""
    cost = [c for c in ("latency_ratio", "memory_ratio") if c in df]
    fig, axes = plt.subplots(1, 1 + bool(cost), figsize=(6 + 4.5 * bool(cost), 3.5), squeeze=False)
    ax = axes[0, 0]
    sns.lineplot(data=df, x="pruned_share", y="ndcg@10", hue="model", marker="o", ax=ax)
    ax.set(title=title, xlabel="share of layers pruned")
    if cost:
        long = df.melt(id_vars=["model", "pruned_share"], value_vars=cost, var_name="ratio", value_name="pruned / unpruned")
        long["ratio"] = long["ratio"].str.removesuffix("_ratio")
        sns.lineplot(data=long, x="pruned_share", y="pruned / unpruned", hue="model", style="ratio", marker="o",
                     ax=axes[0, 1])
        axes[0, 1].axhline(1.0, color="grey", lw=0.8)
        axes[0, 1].set(title="cost of the pruned forward (measured)", xlabel="share of layers pruned")
    fig.tight_layout()
    return fig


def method_bars(table: pd.DataFrame, title: str, methods=("BM25", "ICR", "QR-R", "CoRe-R")):
    """nDCG@10 of each method per collection, one panel per model (the re-ranking tables as bars)."""
    long = table.melt(id_vars=["model", "collection"], value_vars=list(methods), var_name="method", value_name="nDCG@10")
    grid = sns.catplot(data=long, x="collection", y="nDCG@10", hue="method", col="model", kind="bar",
                       height=3.2, aspect=1.3, hue_order=list(methods))
    grid.set_titles("{col_name}")
    grid.figure.suptitle(title, y=1.04)
    return grid.figure
