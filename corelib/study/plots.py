"""Figures of the study (seaborn/matplotlib), each saved as PNG and PDF; names follow the paper's numbering."""

from __future__ import annotations

import itertools
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch


def save(fig, path_without_suffix: str | Path) -> list[Path]:
    """Write ``<path>.png`` and ``<path>.pdf``; dots in the name (``qwen2.5-...``) are kept. The PDF carries
    no creation date, so a rerun with the same numbers leaves the committed file unchanged."""
    path = Path(path_without_suffix)
    path.parent.mkdir(parents=True, exist_ok=True)
    written = [path.parent / f"{path.name}{suffix}" for suffix in (".png", ".pdf")]
    for out in written:
        fig.savefig(out, bbox_inches="tight", dpi=150, metadata={"CreationDate": None} if out.suffix == ".pdf" else None)
    return written


def head_heatmap(scores: torch.Tensor, title: str, top: list[tuple[int, int]] = (), ax=None,
                 global_layers: list[int] | None = None):
    """Layer x head map of a head score (Figure 2): the top heads outlined, the middle third of depth between
    dashed lines, and, for models with sliding-window layers, the layers that see the whole prompt marked."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    L, H = scores.shape
    ax = ax or plt.subplots(figsize=(max(5, H * 0.3 + 2), max(4, L * 0.2 + 1.5)))[1]
    sns.heatmap(scores.float().numpy(), ax=ax, cmap="viridis", cbar_kws={"label": "score"},
                xticklabels=max(1, H // 8), yticklabels=max(1, L // 16))
    for l, h in top:
        ax.add_patch(plt.Rectangle((h, l), 1, 1, fill=False, edgecolor="red", lw=1.5))
    for y in (L / 3, 2 * L / 3):
        ax.axhline(y, color="white", ls="--", lw=1)
    handles = [Patch(fill=False, edgecolor="red", label=f"top {len(top)} heads"),
               Line2D([], [], color="grey", ls="--", label="middle third of depth")]
    if global_layers:
        for l in global_layers:
            ax.annotate("", xy=(0, l + 0.5), xytext=(-1.2, l + 0.5), annotation_clip=False,
                        arrowprops={"arrowstyle": "->", "color": "black", "lw": 1.2})
        handles.append(Line2D([], [], color="black", marker=">", ls="", label="global-attention layer"))
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=len(handles), fontsize=7,
              frameon=False)
    ax.set(xlabel="head", ylabel="layer")
    ax.set_title(title, fontsize=9, wrap=True)
    return ax


def head_count_sweep(curves: pd.DataFrame, icr: float, title: str, ax=None):
    """nDCG@10 against heads added in score order (Figure 1); peak marked, ICR as a line.
    ``curves``: one column per order, indexed by the number of heads."""
    ax = ax or plt.subplots(figsize=(6, 3.5))[1]
    for name in curves.columns:
        s = curves[name].dropna()
        ax.plot(s.index, s.values, label=name)
        k = int(s.idxmax())
        ax.scatter([k], [s.max()], zorder=3)
        ax.annotate(f"peak {s.max():.3f} @ {k}", (k, s.max()), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.axhline(icr, color="grey", ls="--", label="ICR (all heads)")
    ax.set(xscale="log", xlabel="number of heads (score order)", ylabel="nDCG@10")
    ax.set_title(title, fontsize=9, wrap=True)
    ax.legend(fontsize=8)
    return ax


def sweep_grid(sweep: pd.DataFrame, peaks: pd.DataFrame, model: str):
    """Figure 1 per collection: one panel per collection (and the mean), CoRe and QR orders, ICR dashed."""
    sub = sweep[sweep["model"] == model]
    names = list(dict.fromkeys(sub["collection"]))
    cols = 4
    rows = int(np.ceil(len(names) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False, sharex=True)
    for ax, name in zip(axes.flat, names):
        part = sub[sub["collection"] == name].pivot(index="heads", columns="order", values="ndcg@10")
        icr = peaks[(peaks["model"] == model) & (peaks["collection"] == name)]["ICR"].iloc[0]
        for order in part.columns:
            ax.plot(part.index, part[order], label=order, lw=1)
        ax.axhline(icr, color="grey", ls="--", lw=0.8, label="ICR")
        ax.set(xscale="log")
        ax.set_title(name, fontsize=9)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.supxlabel("number of heads (score order)")
    fig.supylabel("nDCG@10")
    fig.suptitle(f"Figure 1 analog per collection: {model}", y=1.01)
    fig.tight_layout()
    return fig


def pruning(df: pd.DataFrame, cost: pd.DataFrame | None, title: str):
    """Figure 3: nDCG@10 of CoRe-R, QR-R and NIAH-R by pruned share, and the measured latency and
    peak-memory ratios of the pruned forward when measured."""
    fig, axes = plt.subplots(1, 1 + (cost is not None), figsize=(6 + 4.5 * (cost is not None), 3.5), squeeze=False)
    sns.lineplot(data=df, x="pruned share", y="ndcg@10", hue="model", style="method", marker="o", ax=axes[0, 0])
    axes[0, 0].set_title(title, fontsize=9, wrap=True)
    axes[0, 0].set(xlabel="share of layers pruned")
    if cost is not None:
        pruned = cost[cost["run"] == "pruned"]
        long = pruned.melt(id_vars=["model", "pruned share"], value_vars=["latency ratio", "memory ratio"],
                           var_name="ratio", value_name="pruned / unpruned")
        sns.lineplot(data=long, x="pruned share", y="pruned / unpruned", hue="model", style="ratio", marker="o",
                     ax=axes[0, 1])
        axes[0, 1].axhline(1.0, color="grey", lw=0.8)
        axes[0, 1].set_title("cost of the pruned forward (measured)", fontsize=9)
        axes[0, 1].set(xlabel="share of layers pruned")
    fig.tight_layout()
    return fig


def method_bars(table: pd.DataFrame, title: str,
                methods=("BM25", "Dense", "Bi-encoder", "ICR", "QR-R", "CoRe-R", "NIAH-R")):
    """nDCG@10 of each method per collection, one panel per model; the axis spans the values shown,
    so that differences of a point or two are visible. A method no model has (all NaN) is left out."""
    methods = [m for m in methods if m in table and table[m].notna().any()]
    long = table.melt(id_vars=["model", "collection"], value_vars=list(methods), var_name="method", value_name="nDCG@10")
    grid = sns.catplot(data=long, x="collection", y="nDCG@10", hue="method", col="model", kind="bar",
                       height=3.2, aspect=1.3, hue_order=list(methods), sharey=True)
    lo, hi = long["nDCG@10"].min(), long["nDCG@10"].max()
    pad = max(0.01, (hi - lo) * 0.15)
    grid.set(ylim=(max(0, lo - pad), min(1, hi + pad)))
    grid.set_titles("{col_name}")
    grid.figure.suptitle(title, y=1.04, fontsize=10)
    return grid.figure


def control_distribution(scores: dict[str, np.ndarray], positions: pd.DataFrame, model: str):
    """The random-head-set distributions of one model, with a line per method (the controls figure)."""
    fig, axes = plt.subplots(1, len(scores), figsize=(5 * len(scores), 3.2), squeeze=False, sharey=True)
    palette = dict(zip(positions["method"].unique(), sns.color_palette("tab10")))
    for ax, (control, values) in zip(axes.flat, scores.items()):
        sns.histplot(values, ax=ax, color="lightgrey", bins=40)
        for _, r in positions[positions["control"] == control].iterrows():
            ax.axvline(r["ndcg@10"], color=palette[r["method"]], lw=1.5,
                       label=f"{r['method']} ({r['percentile']:.0f}th pct.)")
        ax.set_title(f"{model}: {control} ({len(values)} sets)", fontsize=9)
        ax.set(xlabel="mean nDCG@10 over collections")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def scaling(df: pd.DataFrame):
    """The scaling view: mean nDCG@10 of each method, and CoRe-R's paired differences with their 95% CIs,
    against the parameter count (log scale)."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    methods = [m for m in ("BM25", "ICR", "QR-R", "CoRe-R", "NIAH-R", "random 8 heads (median)") if df[m].notna().any()]
    for m in methods:
        axes[0].plot(df["parameters"], df[m], marker="o", label=m, ls="--" if m.startswith("random") else "-")
    axes[0].set(xscale="log", xlabel="parameters", ylabel="mean nDCG@10 over collections")
    axes[0].legend(fontsize=7)
    for k, other in enumerate(("ICR", "QR-R")):
        y, lo, hi = (df[f"CoRe-R - {other}{c}"].to_numpy(dtype=float) for c in ("", " ci low", " ci high"))
        x = df["parameters"].to_numpy(dtype=float) * (1 + 0.04 * k)  # side by side
        axes[1].errorbar(x, y, yerr=[y - lo, hi - y], marker="o", capsize=3, label=f"CoRe-R - {other}")
    axes[1].axhline(0, color="grey", lw=0.8)
    axes[1].set(xscale="log", xlabel="parameters", ylabel="paired difference, points (95% CI)")
    axes[1].legend(fontsize=7)
    for ax, (_, r) in itertools.product(axes[:1], df.iterrows()):
        ax.annotate(r["model"], (r["parameters"], r["CoRe-R"]), fontsize=7, textcoords="offset points", xytext=(3, 3))
    fig.tight_layout()
    return fig


def forest(df: pd.DataFrame, title: str):
    """Each claim's paired difference and 95% CI per collection and over all collections (the ``forest``
    table): a panel per claim, a row per collection, a marker per model (pooled in black)."""
    from .analysis import ALL_COLLECTIONS, POOLED
    from .methods import MODEL_MARKERS

    claims = list(dict.fromkeys(df["claim"]))
    models = [m for m in dict.fromkeys(df["model"]) if m != POOLED] + ([POOLED] if POOLED in set(df["model"]) else [])
    rows = [c for c in dict.fromkeys(df["collection"]) if c != ALL_COLLECTIONS] + [ALL_COLLECTIONS]
    colours = dict(zip(models, sns.color_palette("colorblind", len(models))))
    colours[POOLED] = "black"
    fig, axes = plt.subplots(1, len(claims), figsize=(3.1 * len(claims), 0.42 * len(rows) * max(1, len(models) / 3) + 1.2),
                             sharey=True, squeeze=False)
    step = 0.8 / max(1, len(models))
    for ax, claim in zip(axes.flat, claims):
        part = df[df["claim"] == claim]
        for k, m in enumerate(models):
            sub = part[part["model"] == m].set_index("collection").reindex(rows)
            y = np.arange(len(rows)) - 0.4 + step * (k + 0.5)
            err = [sub["difference"] - sub["ci low"], sub["ci high"] - sub["difference"]]
            ax.errorbar(sub["difference"], y, xerr=err, fmt=MODEL_MARKERS[k % len(MODEL_MARKERS)], ms=4, lw=1,
                        capsize=2, color=colours[m], label=m)
        ax.axvline(0, color="grey", lw=0.8)
        ax.axhline(len(rows) - 1.5, color="lightgrey", lw=0.8)
        ax.set_title(claim, fontsize=9)
        ax.set(xlabel="difference, points of nDCG@10")
    axes[0, 0].set_yticks(range(len(rows)), [r.split(" (")[0] if r == ALL_COLLECTIONS else r for r in rows])
    axes[0, 0].invert_yaxis()
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=len(models), fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
