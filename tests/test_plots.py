import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from corelib import plots


def test_save_keeps_dots_in_model_names(tmp_path):
    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1])
    written = plots.save(fig, tmp_path / "04_sweep_qwen2.5-coder-0.5b")
    plt.close(fig)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["04_sweep_qwen2.5-coder-0.5b.pdf", "04_sweep_qwen2.5-coder-0.5b.png"]
    assert all(p.stat().st_size > 1000 for p in written)
