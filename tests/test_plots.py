import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from corelib.study import plots
from corelib.study.analysis import SCALING_DEPTH


def test_save_keeps_dots_in_model_names(tmp_path):
    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1])
    written = plots.save(fig, tmp_path / "04_sweep_qwen2.5-coder-0.5b")
    plt.close(fig)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["04_sweep_qwen2.5-coder-0.5b.pdf", "04_sweep_qwen2.5-coder-0.5b.png"]
    assert all(p.stat().st_size > 1000 for p in written)


def test_method_bars_draw_every_value_per_model():
    import pandas as pd

    table = pd.DataFrame({"model": ["a", "a", "b"], "collection": ["x", "y", "x"], "BM25": [0.1, 0.2, 0.3],
                          "ICR": [0.4, 0.5, 0.6], "QR-R": [0.11, 0.12, 0.13], "CoRe-R": [0.21, 0.22, 0.23]})
    fig = plots.method_bars(table, "t")
    heights = sorted(round(b.get_height(), 6) for ax in fig.axes for b in ax.patches if b.get_height() > 0)
    plt.close(fig)
    assert [ax.get_title() for ax in fig.axes] == ["a", "b"]
    assert heights == sorted(table[["BM25", "ICR", "QR-R", "CoRe-R"]].to_numpy().ravel().round(6).tolist())


def test_save_writes_the_same_bytes_at_another_time(tmp_path, monkeypatch):
    """A rerun with the same numbers must not show up in git: the PDF carries no creation date."""
    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1])
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")  # matplotlib's clock for the PDF date
    first = [p.read_bytes() for p in plots.save(fig, tmp_path / "a" / "fig")]
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1800000000")
    second = [p.read_bytes() for p in plots.save(fig, tmp_path / "b" / "fig")]
    plt.close(fig)
    assert first == second


def test_sweep_draws_every_head_order_of_the_study_in_its_method_colour():
    import pandas as pd

    from corelib.study.methods import NIAH_PROMPT, colour

    curves = pd.DataFrame({"core": [0.3, 0.5, 0.4], "qr": [0.2, 0.3, 0.25], "niah": [0.1, 0.2, 0.3],
                           "niah-prompt": [0.15, 0.35, 0.2]}, index=[1, 2, 3])
    ax = plots.head_count_sweep(curves, 0.3, "t")
    lines = {line.get_label(): line for line in ax.get_lines()}
    annotations = [t for t in ax.texts if t.arrow_patch is not None] if hasattr(ax, "texts") else []
    plt.close(ax.figure)
    # each peak named in its line's legend entry, with no leader line across the curves
    prompt = lines[f"{NIAH_PROMPT} order (peak 0.350 at 2 heads)"]
    assert prompt.get_color() == colour(NIAH_PROMPT) != colour("NIAH-R") and prompt.get_linestyle() == ":"
    assert lines["CoRe-R order (peak 0.500 at 2 heads)"].get_linestyle() == "-"
    assert list(prompt.get_ydata()) == [0.15, 0.35, 0.2]
    assert "NIAH-R order (peak 0.300 at 3 heads)" in lines and not annotations


def test_a_control_without_its_sets_scores_is_drawn_from_its_summary():
    """A model whose committed rows predate ``control_set_scores``: its 5-95% band and median, each method's line."""
    import pandas as pd

    summary = pd.Series({"model": "m", "control": "random (uniform)", "sets": 1000, "median": 0.40, "p5": 0.32,
                         "p95": 0.45, "distinct sets": float("nan")})
    positions = pd.DataFrame({"model": "m", "control": "random (uniform)", "method": ["ICR", "CoRe-R"],
                              "ndcg@10": [0.42, 0.47], "percentile": [68.0, 99.0]})
    fig = plots.control_distribution({"random (uniform)": summary}, positions, "m")
    ax = fig.axes[0]
    band = [p for p in ax.patches if p.get_label() == "5-95% of the sets"]
    assert len(band) == 1 and band[0].get_x() == 0.32 and band[0].get_width() == 0.45 - 0.32
    lines = {round(l.get_xdata()[0], 6) for l in ax.lines}
    assert {0.40, 0.42, 0.47} <= lines
    lo, hi = ax.get_xlim()
    assert lo < 0.32 and hi > 0.47
    assert "1000 sets: grey 5-95%, dotted median" in ax.get_title()
    plt.close(fig)


def test_the_scaling_view_puts_the_papers_models_depth_beside_the_small_models():
    """The third panel: each model's median relative depth of its top CoRe heads (filled), then the paper's models'
    from their released scores (open), over the middle third."""
    import pandas as pd

    df = pd.DataFrame({"model": ["b", "a"], "parameters": [2e9, 1e8], "BM25": [0.4, 0.4], "ICR": [0.3, 0.35],
                       "QR-R": [0.4, 0.41], "CoRe-R": [0.42, 0.43], "random 8 heads (median)": [0.3, 0.3],
                       **{f"CoRe-R - {o}{c}": [1.0, 2.0] for o in ("ICR", "QR-R") for c in ("", " ci low", " ci high")},
                       SCALING_DEPTH: [0.7, 0.55]})
    released = pd.DataFrame({"model": ["Big-7B"], "median relative depth": [0.45]})
    fig = plots.scaling(df, released=released)
    ax = fig.axes[2]
    ours, theirs = ax.collections[0], ax.collections[1]  # after the shaded band (a patch)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "b", "Big-7B"]  # size order, then the paper's
    assert ours.get_offsets()[:, 1].tolist() == [0.55, 0.7] and theirs.get_offsets().tolist() == [[2.0, 0.45]]
    assert len(plots.scaling(df.drop(columns=[SCALING_DEPTH])).axes) == 2
    plt.close("all")


def _aspect(fig) -> float:
    w, h = fig.get_size_inches()
    return w / h


def test_figures_stay_within_two_to_one_and_models_never_take_a_method_colour():
    """A figure read at notebook width keeps legible text: at most about 2:1 (controls of two or three random-set
    kinds, pruning over four models, a forest of five claims over eight rows); models are shades of grey with a
    marker each, never one of the methods' hues."""
    import numpy as np
    import pandas as pd

    from corelib.study.methods import METHODS, model_styles

    rng = np.random.default_rng(0)
    positions = pd.DataFrame({"model": "m", "control": ["u", "u", "l", "l", "n", "n"], "method": ["ICR", "CoRe-R"] * 3,
                              "ndcg@10": 0.45, "percentile": 50.0})
    for n in (2, 3):
        fig = plots.control_distribution({c: rng.normal(0.45, 0.02, 100) for c in "uln"[:n]}, positions, "m")
        assert _aspect(fig) <= 2.1, n
        plt.close(fig)
    models = ["a", "b", "c", "d"]
    prune = pd.DataFrame([{"model": m, "method": "CoRe-R", "pruned share": s, "kept layers": 10, "ndcg@10": 0.4,
                           "deepest head": 5, "level": "fixed"} for m in models for s in (0.0, 0.5)])
    fig = plots.pruning(prune, "t")
    assert _aspect(fig) <= 2.1
    plt.close(fig)
    rows = [{"claim": c, "model": m, "collection": col, "difference": 1.0, "ci low": 0.0, "ci high": 2.0}
            for c in ("A", "B", "C", "D", "E") for m in [*models, "pooled (a query once)"]
            for col in ("x", "y", "all (collections weighted equally)")]
    fig = plots.forest(pd.DataFrame(rows), "t")
    assert _aspect(fig) <= 2.3  # a grid of five panels
    plt.close(fig)
    hues = {m.colour.lower() for m in METHODS.values()}
    assert not {s["color"].lower() for s in model_styles(models).values()} & hues
    assert len({(s["color"], s["marker"]) for s in model_styles(models).values()}) == 4
