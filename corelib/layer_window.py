"""A layer-window baseline (after Selective-ICR): all heads of one contiguous window of layers instead of all
layers (ICR) or a few chosen heads (CoRe-R). The window is chosen on detection records only, by the same
contrastive criterion CoRe uses for a single head, applied to the window's summed attention mass."""

from __future__ import annotations

from typing import Sequence

import torch

from .checks import positive_finite
from .errors import UsageError
from .records import QueryRecord


def window_scores(mass: torch.Tensor, positives: torch.Tensor, temperature: float) -> torch.Tensor:
    """CoRe's score of every contiguous layer window: for window [a, b], the mean over samples of
    softmax_d(m_d / t) at the positive, where m_d is the attention mass on document d summed over every head
    of layers a..b. mass [S, L, H, N] (absent documents: -inf), positives [S] -> [L, L] (a <= b; NaN below)."""
    positive_finite(temperature, "temperature")
    S, L, H, N = mass.shape
    per_layer = torch.nan_to_num(mass.double(), neginf=0.0).sum(2)  # [S, L, N]
    absent = torch.isinf(mass[:, 0, 0, :])  # [S, N]
    csum = torch.nn.functional.pad(per_layer.cumsum(1), (0, 0, 1, 0))  # [S, L+1, N]
    out = torch.full((L, L), float("nan"), dtype=torch.float64)
    for a in range(L):
        window = csum[:, a + 1:] - csum[:, a: a + 1]  # [S, L-a, N]: windows [a, a..L-1]
        window = window.masked_fill(absent[:, None, :], float("-inf"))
        logp = torch.log_softmax(window / temperature, dim=-1)
        pos = logp.gather(-1, positives.view(-1, 1, 1).expand(S, L - a, 1)).squeeze(-1)
        out[a, a:] = pos.exp().mean(0)
    return out


def best_layer_window(records: Sequence[QueryRecord], temperature: float) -> tuple[int, int]:
    """(first, last) layer of the window with the best ``window_scores`` on detection records (uncalibrated
    mass); ties go to the narrower window, then the shallower."""
    if not records or any(r.positive is None for r in records):
        raise UsageError("the layer window is chosen on detection records: give records with their positive marked")
    mass = torch.stack([r.doc_mass for r in records])
    scores = window_scores(mass, torch.tensor([r.positive for r in records]), temperature)
    L = scores.shape[0]
    candidates = [(float(scores[a, b]), -(b - a), -a, a, b) for a in range(L) for b in range(a, L)]
    _, _, _, a, b = max(candidates)
    return a, b


def window_heads(first: int, last: int, num_heads: int) -> list[tuple[int, int]]:
    """Every head of layers first..last."""
    return [(l, h) for l in range(first, last + 1) for h in range(num_heads)]
