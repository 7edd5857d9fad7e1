"""Figures of the study (seaborn/matplotlib), each saved as PNG and PDF."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
import torch


def save(fig, path_without_suffix: str | Path) -> None:
    path = Path(path_without_suffix)
    path.parent.mkdir(parents=True, exist_ok=True)
    for suffix in (".png", ".pdf"):
        fig.savefig(path.with_suffix(suffix), bbox_inches="tight", dpi=150)


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
    """nDCG@10 and latency ratio by pruned share (Figure 3/5)."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    sns.lineplot(data=df, x="pruned_share", y="ndcg@10", hue="model", marker="o", ax=ax)
    ax.set(title=title, xlabel="share of layers pruned")
    if "latency_ratio" in df:
        ax2 = ax.twinx()
        sns.lineplot(data=df, x="pruned_share", y="latency_ratio", hue="model", ls=":", marker="x", ax=ax2, legend=False)
        ax2.set(ylabel="latency / unpruned (dotted)")
    return fig
