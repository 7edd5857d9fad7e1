"""Figures of the study (seaborn/matplotlib), each saved as PNG and PDF; names follow the paper's numbering."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch

from .analysis import SCALING_DEPTH
from .methods import NIAH_PROMPT, line_style


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
                xticklabels=max(1, H // 8), yticklabels=max(1, L // 12))
    ax.tick_params(axis="both", labelrotation=0)  # seaborn turns crowded labels sideways; the step above spaces them
    for l, h in top:
        ax.add_patch(plt.Rectangle((h, l), 1, 1, fill=False, edgecolor="red", lw=1.5))
    for y in (L / 3, 2 * L / 3):
        ax.axhline(y, color="white", ls="--", lw=1)
    handles = [Patch(fill=False, edgecolor="red", label=f"top {len(top)} heads"),
               Line2D([], [], color="grey", ls="--", label="middle third of depth")]
    if global_layers:  # their layer labels read "(global)", in bold, every one of them shown
        shown = {int(t.get_text()) for t in ax.get_yticklabels() if t.get_text()} | set(global_layers)
        ax.set_yticks([l + 0.5 for l in sorted(shown)],
                      [f"{l} (global)" if l in global_layers else str(l) for l in sorted(shown)])
        for label in ax.get_yticklabels():
            label.set_fontweight("bold" if "global" in label.get_text() else "normal")
        handles.append(Line2D([], [], color="none", label="(global): layer attending over the whole prompt"))
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0), borderaxespad=4.8, ncol=len(handles), fontsize=7,
              frameon=False)
    ax.set(xlabel="head", ylabel="layer")
    ax.set_title(title, fontsize=9, wrap=True)
    return ax


HEATMAPS = {"core": ("fig2_heatmap_{model}", "Figure 2 analog: S_CoRe, {model} (t={temperature:g})"),
            "niah": ("fig2_heatmap_niah_{model}", "Figure 2 analog: NIAH retrieval score, {model}")}


def heatmap_figures(study, models=None, k: int | None = None, methods=tuple(HEATMAPS)) -> list[Path]:
    """Figure 2's maps (S_CoRe, and NIAH-R's copying score where a model has it; ``methods``: some of them) from
    the table ``head_scores`` alone: every head's score, the top ``k`` outlined, gemma3's global-attention layers
    marked."""
    table = study.tables.read("head_scores")
    if table is None:
        return []
    k = k or study.p.num_heads
    written = []
    for m in models or dict.fromkeys(table["model"]):
        for method in methods:
            stem, title = HEATMAPS[method]
            g = table[(table["model"] == m) & (table["method"] == method)]
            if g.empty:
                continue
            L, H = int(g["layer"].max()) + 1, int(g["head"].max()) + 1
            grid = np.zeros((L, H), dtype=np.float32)
            grid[g["layer"].to_numpy(), g["head"].to_numpy()] = g["score"].to_numpy()
            scores = torch.from_numpy(grid)
            top = [(int(l), int(h)) for l, h in g.sort_values("rank")[["layer", "head"]].head(k).to_numpy()]
            layers = g.groupby("layer")["global-attention layer"].first()
            global_layers = None if layers.all() else [int(l) for l in layers.index[layers.astype(bool)]]
            ax = head_heatmap(scores, title.format(model=m, temperature=g["temperature"].iloc[0]), top,
                              global_layers=global_layers)
            written += save(ax.figure, study.figures_dir / stem.format(model=m))
    return written  # the figures stay open, so that a notebook shows them


# a head order -> the method that reads it; the prompt-length needle heads are drawn dotted in their own colour
ORDER_LABELS = {"core": "CoRe-R", "qr": "QR-R", "niah": "NIAH-R", "niah-prompt": NIAH_PROMPT}
ORDER_STYLES = {"niah-prompt": line_style(NIAH_PROMPT)}


def head_count_sweep(curves: pd.DataFrame, icr: float, title: str, ax=None, window: tuple[int, float] | None = None):
    """nDCG@10 against heads added in score order (Figure 1), a line per order in its method's colour, each peak
    marked and named in the legend entry of its line, ICR as a dashed line, the layer window (its head count, its
    nDCG@10) as a point; the legend outside the axes. ``curves``: one column per order (core, qr, niah), indexed
    by the number of heads."""
    from .methods import colour

    ax = ax or plt.subplots(figsize=(7, 5))[1]
    peaks = []
    for name in curves.columns:
        s = curves[name].dropna()
        label = ORDER_LABELS.get(name, name)
        k = int(s.idxmax())
        ax.plot(s.index, s.values, color=colour(label), ls=ORDER_STYLES.get(name, "-"),
                label=f"{label} order (peak {s.max():.3f} at {k} head{'s' if k > 1 else ''})")
        ax.scatter([k], [s.max()], color=colour(label), zorder=3)  # the peak, named in the legend (no leader line)
        peaks.append((label, k, float(s.max())))
    ax.axhline(icr, color=colour("ICR"), ls="--", label="ICR (all heads)")
    if window is not None and pd.notna(window[1]):
        ax.scatter([window[0]], [window[1]], marker="P", s=60, color=colour("Layer window"), zorder=4,
                   label=f"Layer window ({int(window[0])} heads)")
    ax.set(xscale="log", xlabel="number of heads (score order)", ylabel="nDCG@10")
    ax.set_title(title, fontsize=9, wrap=True)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, frameon=False)
    ax.figure.tight_layout()
    return ax


def figure1(sweep: pd.DataFrame, peaks: pd.DataFrame, model: str, collections: int):
    """Figure 1 of one model from the sweep tables: [(figure, file stem)] for the mean over collections and
    the per-collection grid."""
    mean = sweep[(sweep.model == model) & (sweep.collection == "mean over collections")].pivot(
        index="heads", columns="order", values="ndcg@10")
    row = peaks[(peaks.model == model) & (peaks.collection == "mean over collections")].iloc[0]
    window = (row["Layer window heads"], row["Layer window"]) if pd.notna(row.get("Layer window")) else None
    ax = head_count_sweep(mean, row["ICR"], f"Figure 1 analog: {model}, mean nDCG@10 over {collections} collections",
                          window=window)
    return [(ax.figure, f"fig1_head_count_sweep_{model}"), (sweep_grid(sweep, peaks, model), f"fig1_per_collection_{model}")]


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
        from .methods import colour

        for order in part.columns:
            label = ORDER_LABELS.get(order, order)
            ax.plot(part.index, part[order], label=f"{label} order", lw=1, color=colour(label),
                    ls=ORDER_STYLES.get(order, "-"))
        ax.axhline(icr, color=colour("ICR"), ls="--", lw=0.8, label="ICR")
        row = peaks[(peaks["model"] == model) & (peaks["collection"] == name)].iloc[0]
        if pd.notna(row.get("Layer window")):
            ax.scatter([row["Layer window heads"]], [row["Layer window"]], marker="P", s=30, color=colour("Layer window"),
                       zorder=4, label="Layer window")
        ax.set(xscale="log")
        ax.set_title(name, fontsize=9)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=len(labels), fontsize=8, frameon=False)
    fig.supxlabel("number of heads (score order)")
    fig.supylabel("nDCG@10")
    fig.suptitle(f"Figure 1 analog per collection: {model}", y=1.01)
    fig.tight_layout()
    return fig


def pruning(df: pd.DataFrame, title: str, margin: float = 0.5):
    """Figure 3: a panel per model, nDCG@10 of each method by pruned share, with CoRe-R's unpruned value and the
    band of ``margin`` points below it (the non-inferiority margin); the legend below the panels."""
    from .methods import colour

    models = list(dict.fromkeys(df["model"]))
    cols = min(2, len(models))
    rows = int(np.ceil(len(models) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False, sharey=True)
    for ax in list(axes.flat)[len(models):]:
        ax.axis("off")
    for ax, m in zip(axes.flat, models):
        part = df[df["model"] == m]
        fixed = part[part["level"].fillna("fixed") == "fixed"]
        for method, g in fixed.groupby("method", sort=False):
            ax.plot(g["pruned share"], g["ndcg@10"], marker="o", color=colour(method), ls=line_style(method), label=method)
        keeps = part[(part["level"] != "fixed") & part["level"].notna() & (part["method"] == "CoRe-R")]
        if len(keeps):  # the largest share that keeps the layers of CoRe's top heads
            x = float(keeps["pruned share"].iloc[0])
            ax.axvline(x, color="black", ls="--", lw=0.8, label="largest share keeping CoRe's top-head layers")
            ax.plot([x], keeps["ndcg@10"].iloc[:1], marker="*", ms=11, color=colour("CoRe-R"), ls="none",
                    label="CoRe-R at that share")
        ref = fixed[(fixed["method"] == "CoRe-R") & (fixed["pruned share"] == 0)]["ndcg@10"]
        if len(ref):
            r = float(ref.iloc[0])
            ax.axhspan(r - margin / 100, r, color=colour("CoRe-R"), alpha=0.3, lw=0,
                       label=f"CoRe-R unpruned, minus {margin} point")
            ax.axhline(r, color=colour("CoRe-R"), ls=":", lw=1)
        ax.set_title(m, fontsize=9)
        ax.set(xlabel="share of layers pruned")
    for row in axes:
        row[0].set(ylabel="mean nDCG@10")
    legend = {}  # every panel's entries once (a model's table may lack the level that keeps its top heads)
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(label, handle)
    fig.legend(list(legend.values()), list(legend), loc="upper center", bbox_to_anchor=(0.5, 0.02), ncol=3,
               fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def pruning_cost(cost: pd.DataFrame, title: str):
    """The measured cost of the pruned forward: latency and peak-memory ratios to the unpruned forward by
    pruned share, a line per model (the early exit's point is in the table)."""
    pruned = cost[cost["run"] == "pruned"]
    models = list(dict.fromkeys(pruned["model"]))
    from .methods import model_styles

    styles = model_styles(models)
    fig, axes = plt.subplots(1, 2, figsize=(8, 4), sharey=True)
    for ax, ratio in zip(axes, ("latency ratio", "memory ratio")):
        for m in models:
            g = pruned[pruned["model"] == m]
            ax.plot(g["pruned share"], g[ratio], label=m, **styles[m])
        ax.plot([0, 1], [1, 0], color="grey", ls=":", lw=0.8, label="proportional to the layers kept")
        ax.set(xlabel="share of layers pruned", xlim=(-0.03, 0.73), ylim=(0, 1.05))
        ax.set_title(ratio.replace("ratio", "(pruned / unpruned)"), fontsize=9)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.02), ncol=3, fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=10, wrap=True)
    fig.tight_layout()
    return fig


def method_bars(table: pd.DataFrame, title: str,
                methods=("BM25", "Dense", "Bi-encoder", "ICR", "QR-R", "CoRe-R", "NIAH-R", "Layer window"), order=None):
    """nDCG@10 of each method per collection, one panel per model (``order``: the models in this order, e.g. by
    size), bars from 0 in each method's colour. A method no model has (all NaN) is left out."""
    from .methods import palette

    methods = [m for m in methods if m in table and table[m].notna().any()]
    long = table.melt(id_vars=["model", "collection"], value_vars=list(methods), var_name="method", value_name="nDCG@10")
    grid = sns.catplot(data=long, x="collection", y="nDCG@10", hue="method", col="model", kind="bar",
                       col_wrap=min(2, long["model"].nunique()),
                       height=3.0, aspect=1.6, hue_order=list(methods), palette=palette(methods), sharey=True,
                       col_order=order or list(dict.fromkeys(long["model"])))
    low = float(long["nDCG@10"].min())
    # every bar high (the multilingual set: 0.7-1.0): the axis starts at the tenth below the lowest, and says so
    floor = np.floor(low * 10) / 10 - 0.1 if low > 0.5 else 0.0
    grid.set(ylim=(floor, min(1, long["nDCG@10"].max() * 1.1) if floor == 0 else 1.0))
    if floor:
        grid.set_ylabels(f"nDCG@10 (axis from {floor:.1f})")
    grid.set_titles("{col_name}")
    grid.tick_params(axis="x", labelrotation=30)
    grid.figure.suptitle(title, y=1.03, fontsize=10)
    return grid.figure


LINE_STYLES = ("-", "--", ":", "-.", (0, (5, 1)), (0, (3, 1, 1, 1, 1, 1)), (0, (1, 3)), (0, (8, 2, 2, 2)))


def control_distribution(scores: dict[str, np.ndarray | pd.Series], positions: pd.DataFrame, model: str,
                         counts: pd.DataFrame | None = None):
    """The random-head-set distributions of one model (a panel per control, its number of sets and of distinct
    sets in the title), with a line per method in its colour and a line style of its own, so that methods
    that coincide stay distinguishable; a marker per method at its own height; the legend outside the axes.
    A control given as a row of table ``controls`` (a run that kept no set's score) is drawn as its 5-95% band
    and median instead of a histogram."""
    from .methods import colour

    def tint(label):  # sets that are no method (the in-sample reference, gemma3's global heads): black
        try:
            return colour(label)
        except ValueError:
            return "black"

    methods = list(dict.fromkeys(positions["method"]))
    cols = 2 if len(scores) >= 3 else 1  # at most about 2:1: two controls one above the other, three or four in a grid
    grid_rows = int(np.ceil(len(scores) / cols))
    spare_panel = grid_rows * cols > len(scores)
    fig, axes = plt.subplots(grid_rows, cols, figsize=(4.6 * cols + (0 if spare_panel else 2.6), 3.4 * grid_rows),
                             squeeze=False)
    for ax in list(axes.flat)[len(scores):]:
        ax.axis("off")
    for ax, (control, values) in zip(axes.flat, scores.items()):
        rows = positions[positions["control"] == control].set_index("method")
        if isinstance(values, pd.Series):  # the summary of table controls
            sets, summary = int(values["sets"]), True
            ax.axvspan(values["p5"], values["p95"], color="lightgrey", lw=0, label="5-95% of the sets")
            ax.axvline(values["median"], color="grey", lw=1, ls=":")
            ax.set_ylim(0, 1)
            ax.set_yticks([])
            lo, hi = min(values["p5"], rows["ndcg@10"].min()), max(values["p95"], rows["ndcg@10"].max())
            ax.set_xlim(lo - 0.08 * (hi - lo), hi + 0.08 * (hi - lo))
        else:
            sets, summary = len(values), False
            sns.histplot(values, ax=ax, color="lightgrey", bins=40)
        top = ax.get_ylim()[1]
        for i, method in enumerate(methods):
            if method not in rows.index:
                continue
            x = rows.loc[method, "ndcg@10"]
            ax.axvline(x, color=tint(method), lw=1.4, ls=LINE_STYLES[i % len(LINE_STYLES)])
            ax.plot([x], [top * (0.97 - 0.06 * i)], marker="o", ms=4, color=tint(method))
        title = f"{control}\n{sets} sets"
        if counts is not None:
            row = counts[(counts["model"] == model) & (counts["control"] == control)]
            if len(row) and pd.notna(row["distinct sets"].iloc[0]) and row["distinct sets"].iloc[0] <= sets:
                title += f" (every distinct set: {int(row['distinct sets'].iloc[0])})"
        if summary:
            title += ": grey 5-95%, dotted median"
        ax.set_title(title, fontsize=9)
        ax.set(xlabel="mean nDCG@10 over collections")
    handles = [plt.Line2D([], [], color=tint(m), ls=LINE_STYLES[i % len(LINE_STYLES)], marker="o", ms=4,
                          label=f"{m}" + "".join(f"\n  {c.split('(')[-1].rstrip(')')}: {r:.0f}th pct."
                                              for c, r in positions[positions["method"] == m][["control", "percentile"]].values))
               for i, m in enumerate(methods)]
    spare = list(axes.flat)[len(scores):]
    if spare:  # the legend in the grid's empty panel
        spare[0].legend(handles=handles, loc="center", fontsize=7, frameon=False)
    else:
        fig.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=7, frameon=False)
    fig.suptitle(f"{model}: the methods' heads among random head sets", fontsize=10)
    fig.tight_layout()
    return fig


def control_figures(study, models=None) -> list[Path]:
    """Each model's controls figure (``control_distribution``) from the tables alone: ``control_set_scores`` (every
    random set's score), ``control_positions`` and ``controls``. ``models``: some of them, where a model without
    set scores (its rows predate that table) is drawn from the summary in ``controls``; default: every model with
    set scores (so that a redraw keeps a figure that its run drew from the sets)."""
    t = study.tables
    sets, positions, counts = t.read("control_set_scores"), t.read("control_positions"), t.read("controls")
    if positions is None or (sets is None and counts is None):
        return []
    written = []
    for m in models or (dict.fromkeys(sets["model"]) if sets is not None else ()):
        mine = sets[sets["model"] == m] if sets is not None else pd.DataFrame()
        if len(mine):
            dists = {c: g["ndcg@10"].to_numpy() for c, g in mine.groupby("control", sort=False)}
        elif counts is not None and m in set(counts["model"]):
            dists = {r["control"]: r for _, r in counts[counts["model"] == m].iterrows()}
        else:
            continue
        written += save(control_distribution(dists, positions[positions["model"] == m], m, counts),
                        study.figures_dir / f"controls_{m}")
    return written  # the figures stay open, so that a notebook shows them


def _size_label(n: float) -> str:
    return f"{n / 1e9:.1f}B" if n >= 1e9 else f"{n / 1e6:.0f}M"


def scaling(df: pd.DataFrame, average: pd.DataFrame | None = None, released: pd.DataFrame | None = None):
    """The scaling view: a column per model in size order (parameter counts as labels; points, not lines, since the
    models differ in family as well as size). Left: mean nDCG@10 of each method (the bi-encoder from the Table 1
    means when given, and so the dense first stage and the layer window); middle: CoRe-R's paired differences with
    their 95% CIs; right, where the table has it: the median relative depth of each model's top CoRe heads, beside
    the paper's models' from their released scores (``released``: table ``released_depth``), over the middle third."""
    from .methods import TABLE1, colour

    df = df.sort_values("parameters").reset_index(drop=True)
    if average is not None and (more := [m for m in TABLE1 if m in average and m not in df]):
        df = df.merge(average[["model", *more]], on="model", how="left")
    x = np.arange(len(df))
    labels = [f"{_size_label(n)}\n{m}" for m, n in zip(df["model"], df["parameters"])]
    depth = SCALING_DEPTH in df and df[SCALING_DEPTH].notna().any()
    if depth:  # two panels above, the depth panel across the width below: about 3:2
        fig, grid = plt.subplot_mosaic([["methods", "differences"], ["depth", "depth"]], figsize=(13, 8.5))
        axes = [grid["methods"], grid["differences"], grid["depth"]]
    else:
        fig, axes = plt.subplots(1, 2, figsize=(13, 4.6))
    methods = [m for m in TABLE1 if m in df and df[m].notna().any()]
    step = 0.6 / max(1, len(methods))
    for i, m in enumerate(methods):
        axes[0].scatter(x - 0.3 + step * (i + 0.5), df[m], color=colour(m), label=m, zorder=3)
    if df["random 8 heads (median)"].notna().any():
        axes[0].scatter(x + 0.35, df["random 8 heads (median)"], marker="_", s=200, color="black",
                        label="random 8 heads (median)")
    axes[0].set(ylabel="mean nDCG@10 over collections")
    axes[0].set_title("the methods by model (size order)", fontsize=9)
    axes[0].legend(fontsize=7, loc="lower left", ncol=2)
    for k, other in enumerate(("ICR", "QR-R")):
        y, lo, hi = (df[f"CoRe-R - {other}{c}"].to_numpy(dtype=float) for c in ("", " ci low", " ci high"))
        axes[1].errorbar(x - 0.1 + 0.2 * k, y, yerr=[y - lo, hi - y], fmt="o", capsize=3, color=colour(other),
                         label=f"CoRe-R - {other}")
    axes[1].axhline(0, color="grey", lw=0.8)
    axes[1].set(ylabel="paired difference, points (95% CI)")
    axes[1].set_title("CoRe-R against ICR and QR-R", fontsize=9)
    axes[1].legend(fontsize=7, loc="best")
    for ax in axes[:2]:
        ax.set_xticks(x, labels, fontsize=7)
        ax.set_xlim(-0.6, len(df) - 0.4)
    if depth:
        _depth_panel(axes[2], df, released)
    fig.tight_layout()
    return fig


def _depth_panel(ax, df: pd.DataFrame, released: pd.DataFrame | None):
    """The median relative depth of the top CoRe heads: this study's models (filled), then the paper's models
    from their released scores (open), over the middle third of depth (shaded)."""
    from .methods import colour

    core = colour("CoRe-R")
    ours, labels = df[SCALING_DEPTH].to_numpy(dtype=float), list(df["model"])
    theirs = released.dropna(subset=["median relative depth"]) if released is not None else pd.DataFrame()
    ax.axhspan(1 / 3, 2 / 3, color="0.92", zorder=0, label="middle third of depth")
    ax.scatter(np.arange(len(ours)), ours, color=core, zorder=3, label="top-8 CoRe heads, detected here")
    if len(theirs):
        xs = len(ours) + np.arange(len(theirs))
        ax.scatter(xs, theirs["median relative depth"], facecolors="none", edgecolors=core, zorder=3,
                   label="top-8 CoRe heads, from released scores")
        ax.axvline(len(ours) - 0.5, color="grey", lw=0.8)
        labels += list(theirs["model"])
    ax.set_xticks(range(len(labels)), labels, fontsize=7, rotation=35, ha="right")
    ax.set(ylim=(0, 1), ylabel="median relative depth (0: first layer, 1: last)")
    ax.set_title("where the top CoRe heads sit", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")


def forest(df: pd.DataFrame, title: str):
    """Each claim's paired difference and 95% CI per collection and over all collections (the ``forest``
    table): a panel per claim, a row per collection, a marker per model (pooled in black)."""
    from .analysis import ALL_COLLECTIONS, POOLED
    from .methods import model_styles

    claims = list(dict.fromkeys(df["claim"]))
    models = [m for m in dict.fromkeys(df["model"]) if m != POOLED] + ([POOLED] if POOLED in set(df["model"]) else [])
    rows = [c for c in dict.fromkeys(df["collection"]) if c != ALL_COLLECTIONS] + [ALL_COLLECTIONS]
    styles = model_styles([m for m in models if m != POOLED])
    styles[POOLED] = {"color": "#000000", "marker": "*"}
    width = 3.1 * len(claims)
    fig, axes = plt.subplots(1, len(claims), figsize=(width, max(width / 2.2, 0.42 * len(rows) * max(1, len(models) / 3) + 1.2)),
                             sharey=True, squeeze=False)
    step = 0.8 / max(1, len(models))
    for ax, claim in zip(axes.flat, claims):
        part = df[df["claim"] == claim]
        for k, m in enumerate(models):
            sub = part[part["model"] == m].set_index("collection").reindex(rows)
            y = np.arange(len(rows)) - 0.4 + step * (k + 0.5)
            err = [sub["difference"] - sub["ci low"], sub["ci high"] - sub["difference"]]
            ax.errorbar(sub["difference"], y, xerr=err, fmt=styles[m]["marker"], ms=6 if m == POOLED else 4, lw=1,
                        capsize=2, color=styles[m]["color"], label=m)
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


def redraw(study) -> list[Path]:
    """Redraw, from the study's committed tables alone, the figures that need no record: Table 1 and 2, Figure 1
    (sweep), Figure 2's maps (for the models whose ``head_scores`` rows exist), the controls (from the set scores,
    else from the summary in table ``controls``), Figure 3 (pruning and its cost), the scaling view and the forest plot
    (``python -m corelib.study figures --profile cpu``)."""
    t, out, p = study.tables, study.figures_dir, study.p
    written = []
    avg = t.read("table1_average")
    order = list(t.read("scaling").sort_values("parameters")["model"]) if t.read("scaling") is not None else None
    if (table := t.read("table1")) is not None:
        written += save(method_bars(table, f"Table 1 analog ({p.name} profile): nDCG@10 per collection", order=order),
                        out / "table1_rerank")
    if (table2 := t.read("table2")) is not None:
        written += save(method_bars(table2, f"Table 2 analog: {table2['data'].iloc[0]}, nDCG@10 per language", order=order),
                        out / "table2_multilingual")
    sweep, peaks = t.read("sweep"), t.read("sweep_peaks")
    if sweep is not None and peaks is not None:
        for m in dict.fromkeys(sweep["model"]):
            for fig, stem in figure1(sweep, peaks, m, len(p.collections)):
                written += save(fig, out / stem)
    if (prune := t.read("pruning")) is not None:
        written += save(pruning(prune, f"Figure 3 analog: mean nDCG@10 over {', '.join(p.collections)}"), out / "fig3_pruning")
    if (cost := t.read("pruning_cost")) is not None:
        written += save(pruning_cost(cost, "Measured cost of the pruned forward (one prompt per model, each run in its "
                                           "own process)"), out / "fig3_pruning_cost")
    if (scale := t.read("scaling")) is not None:
        written += save(scaling(scale, avg, t.read("released_depth")), out / "scaling")
    if avg is not None and {"Layer window", "Bi-encoder"} <= set(avg.columns) and avg["Layer window"].notna().all():
        opq = t.read("order_per_query")
        bm25 = None if opq is None else {m: float(g.groupby("collection")["ndcg@10"].mean().mean()) for m, g in
                                         opq[(opq["method"] == "BM25") & (opq["order"] == "rank 1 last")].groupby("model")}
        written += save(answer(avg, t.read("order_agreement"), order, bm25), out / "answer")
    if (remedy_means := t.read("order_remedy_means")) is not None:
        written += save(order_remedies(remedy_means, f"Order remedies ({p.name} profile)"), out / "order_remedies")
    written += control_figures(study)
    written += heatmap_figures(study)
    if (fo := t.read("forest")) is not None:
        written += save(forest(fo, f"Per-collection paired differences, profile {p.name} ({p.first_stage.upper()} top "
                                   f"{p.top_k}, NQ heads, top {p.num_heads}; 95% CIs)"), out / "forest")
    plt.close("all")
    return written


def order_remedies(means: pd.DataFrame, title: str, icr_order: str = "rank 1 last"):
    """nDCG@10 of each attention re-ranker under each order remedy, one panel per model: per remedy (a row) and
    method (a colour), a filled marker in ICR's order joined to an open one shuffled, so that the segment's length
    is what the order moves; BM25 and the bi-encoder (the same candidates, no prompt) as vertical reference lines."""
    from matplotlib.lines import Line2D

    from .methods import colour

    models = list(dict.fromkeys(means["model"]))
    attention = means[~means["method"].isin(["BM25", "Bi-encoder"])]
    remedies = list(dict.fromkeys(attention["remedy"]))
    methods = list(dict.fromkeys(attention["method"]))
    fig, axes = plt.subplots(1, len(models), figsize=(5.2 * len(models), 0.55 * len(remedies) + 1.8), sharey=True,
                             squeeze=False)
    offsets = np.linspace(-0.3, 0.3, len(methods))
    for ax, m in zip(axes[0], models):
        mine = means[means["model"] == m]
        for i, remedy in enumerate(remedies):
            for method, dy in zip(methods, offsets):
                rows = mine[(mine["remedy"] == remedy) & (mine["method"] == method)].set_index("order")["ndcg@10"]
                if rows.empty:
                    continue
                shuffled = rows.drop(index=icr_order, errors="ignore")
                y, c = i + dy, colour(method)
                xs = [rows.get(icr_order, np.nan), shuffled.iloc[0] if len(shuffled) else np.nan]
                ax.plot(xs, [y, y], color=c, lw=1.2, alpha=0.8)
                ax.plot(xs[0], y, "o", color=c, ms=6)
                ax.plot(xs[1], y, "o", mfc="white", mec=c, ms=4)  # inside the filled one where both orders agree
        for ref, style in (("BM25", "--"), ("Bi-encoder", ":")):
            value = mine.loc[mine["method"] == ref, "ndcg@10"]
            if len(value):
                ax.axvline(float(value.iloc[0]), color=colour(ref), ls=style, lw=1.2)
        ax.set_yticks(range(len(remedies)), remedies)
        ax.invert_yaxis()
        ax.set_title(m, fontsize=10)
        ax.set_xlabel("nDCG@10 (mean over collections)")
        ax.grid(axis="x", alpha=0.3)
    handles = [Line2D([], [], color=colour(x), marker="o", lw=1.2, label=x) for x in methods]
    handles += [Line2D([], [], color="k", marker="o", ls="", label="ICR's order (rank 1 last)"),
                Line2D([], [], color="k", marker="o", mfc="white", ms=4, ls="", label="shuffled (a ringed dot: both alike)"),
                Line2D([], [], color=colour("BM25"), ls="--", label="BM25"),
                Line2D([], [], color=colour("Bi-encoder"), ls=":", label="Bi-encoder")]
    fig.legend(handles=handles, loc="lower center", ncol=min(5, len(handles)), fontsize=8, frameon=False,
               bbox_to_anchor=(0.5, -0.02 - 0.04 * (len(handles) > 5)))
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return fig


ANSWER_METHODS = ("BM25", "ICR", "Layer window", "CoRe-R", "Bi-encoder")


def answer(average: pd.DataFrame, agreement: pd.DataFrame | None = None, order: list[str] | None = None,
           order_bm25: dict[str, float] | None = None):
    """Where the gain comes from, per model (the README's figure): mean nDCG@10 over the collections of BM25, ICR
    (all heads), the layer window, CoRe-R's 8 heads and the bi-encoder on each model's sample (left); and, on the
    order check's queries, ICR and CoRe-R in ICR's order against the same candidates shuffled, with BM25 on those
    queries (``order_bm25``: model -> its mean; right)."""
    from .methods import colour

    models = order or list(dict.fromkeys(average["model"]))
    panels = 2 if agreement is not None else 1
    fig, axes = plt.subplots(1, panels, figsize=(5.2 * panels, max(0.8 * len(models) + 1.6, 2.6 * panels)),
                             squeeze=False, gridspec_kw={"width_ratios": [1.25, 1][:panels]})
    ax = axes[0][0]
    ys = np.arange(len(models))
    for j, method in enumerate(ANSWER_METHODS):
        values = [float(average.loc[average["model"] == m, method].iloc[0]) for m in models]
        ax.scatter(values, ys, color=colour(method), marker="o" if method not in ("BM25", "Bi-encoder") else "|",
                   s=60 if method not in ("BM25", "Bi-encoder") else 260, label=method, zorder=3, linewidths=2)
    for y, m in zip(ys, models):
        row = average[average["model"] == m].iloc[0]
        ax.plot([row["ICR"], row["CoRe-R"]], [y, y], color="#999999", lw=1, zorder=1)
    ax.set_yticks(ys, [f"{m}\n({int(average.loc[average['model'] == m, 'queries'].iloc[0]):,} queries)" for m in models])
    ax.invert_yaxis()
    ax.set_xlabel("nDCG@10, mean over 7 collections")
    ax.set_title("Each model's sample (BM25 top 20 re-ranked)", fontsize=9)
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=7, loc="lower center", bbox_to_anchor=(0.5, 1.08), ncol=5, frameon=False)
    if agreement is not None:
        ax2 = axes[0][1]
        checked = list(dict.fromkeys(agreement["model"]))
        for i, m in enumerate(checked):
            for dy, method in ((-0.12, "ICR"), (0.12, "CoRe-R")):
                rows = agreement[(agreement["model"] == m) & (agreement["method"] == method)].set_index("order")["mean ndcg@10"]
                icr_order = float(rows.get("rank 1 last"))
                shuffled = float(rows.drop(index="rank 1 last").iloc[0])
                ax2.plot([shuffled, icr_order], [i + dy, i + dy], color=colour(method), lw=1.2)
                ax2.plot(icr_order, i + dy, "o", color=colour(method), ms=6)
                ax2.plot(shuffled, i + dy, "o", mfc="white", mec=colour(method), ms=6)
            if order_bm25 and m in order_bm25:
                ax2.scatter([order_bm25[m]], [i], marker="|", s=500, color=colour("BM25"), linewidths=2, zorder=3)
        ax2.set_yticks(range(len(checked)), [f"{m}\n({int(agreement.loc[agreement['model'] == m, 'queries'].iloc[0]):,} queries)"
                                             for m in checked])
        ax2.invert_yaxis()
        ax2.set_ylim(len(checked) - 0.5, -0.5)
        ax2.set_xlabel("nDCG@10, mean over 7 collections")
        ax2.set_title("The order check's queries: ICR's order (filled), shuffled (open)", fontsize=9)
        ax2.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig
