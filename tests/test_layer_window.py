"""The layer-window baseline: chosen on detection records by CoRe's criterion on the window's summed mass."""

import torch

from corelib.layer_window import best_layer_window, window_heads, window_scores
from corelib.records import QueryRecord


def record(mass, positive):
    L, H, N = mass.shape
    return QueryRecord("q", [f"d{i}" for i in range(N)], torch.arange(N + 1), torch.zeros(L, H, N), mass, None, False,
                       10, positive)


def test_the_window_whose_layers_point_at_the_positive_wins():
    torch.manual_seed(0)
    recs = []
    for s in range(12):
        mass = torch.rand(6, 2, 5) * 0.1
        pos = s % 5
        mass[2:4, :, pos] += 1.0  # layers 2 and 3 both put mass on the positive, but each more on a negative:
        mass[2, :, (pos + 1) % 5] += 1.2  # only their sum ranks the positive first
        mass[3, :, (pos + 2) % 5] += 1.2
        mass[5, :, (pos + 3) % 5] += 3.0  # layer 5 strongly on another negative
        recs.append(record(mass, pos))
    assert best_layer_window(recs, 0.001) == (2, 3)
    scores = window_scores(torch.stack([r.doc_mass for r in recs]), torch.tensor([r.positive for r in recs]), 0.001)
    assert scores.shape == (6, 6) and torch.isnan(scores[3, 2]) and scores[2, 3] > scores[0, 5]
    assert window_heads(2, 3, 2) == [(2, 0), (2, 1), (3, 0), (3, 1)]


def test_ties_go_to_the_narrower_then_the_shallower_window():
    mass = torch.zeros(4, 1, 3)
    mass[1, 0, 0] = 1.0  # only layer 1 separates: every window containing it scores the same (1.0)
    assert best_layer_window([record(mass, 0)], 0.001) == (1, 1)
