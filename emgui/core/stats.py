"""Small, dependency-light statistics shared by the measures: AUROC, rank correlation, bootstrap intervals.

Every interval here is a seeded percentile bootstrap (95 % by default), so the same data always gives
the same interval.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def auroc(positive: Sequence[float], negative: Sequence[float]) -> float | None:
    """P(a positive scores above a negative), ties counting half; None when either side is empty."""
    import numpy as np

    pos, neg = np.asarray(positive, dtype=float), np.asarray(negative, dtype=float)
    if len(pos) == 0 or len(neg) == 0:
        return None
    greater = (pos[:, None] > neg[None, :]).mean()
    ties = (pos[:, None] == neg[None, :]).mean()
    return float(greater + ties / 2)


def _ranks(values: Sequence[float]) -> list[float]:
    """Average ranks (1-based), ties sharing the mean of their positions."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def pearson(x: Sequence[float], y: Sequence[float]) -> float | None:
    import numpy as np

    a, b = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(a) < 3 or a.std() == 0 or b.std() == 0:
        return None
    return float(np.corrcoef(a, b)[0, 1])


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman's rank correlation; None with fewer than 3 pairs or a constant side."""
    if len(x) != len(y):
        raise ValueError("spearman: x and y differ in length")
    return pearson(_ranks(list(x)), _ranks(list(y)))


def bootstrap_mean(
    values: Sequence[float], *, n_boot: int = 2000, seed: int = 0, level: float = 0.95
) -> dict:
    """{'mean', 'ci_low', 'ci_high', 'n'} of a sample mean with a percentile bootstrap interval."""
    import numpy as np

    data = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    if len(data) == 0:
        return {"mean": None, "ci_low": None, "ci_high": None, "n": 0}
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, len(data), size=(n_boot, len(data)))].mean(axis=1)
    tail = (1 - level) / 2 * 100
    return {
        "mean": float(data.mean()),
        "ci_low": float(np.percentile(means, tail)),
        "ci_high": float(np.percentile(means, 100 - tail)),
        "n": int(len(data)),
    }


def bootstrap_auroc(
    positive: Sequence[float], negative: Sequence[float], *, n_boot: int = 1000, seed: int = 0
) -> tuple[float | None, float | None]:
    """95 % interval of the AUROC, resampling each side with replacement."""
    import numpy as np

    pos, neg = np.asarray(positive, dtype=float), np.asarray(negative, dtype=float)
    if len(pos) == 0 or len(neg) == 0:
        return None, None
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(n_boot):
        p = pos[rng.integers(0, len(pos), len(pos))]
        n = neg[rng.integers(0, len(neg), len(neg))]
        draws.append((p[:, None] > n[None, :]).mean() + (p[:, None] == n[None, :]).mean() / 2)
    return float(np.percentile(draws, 2.5)), float(np.percentile(draws, 97.5))
