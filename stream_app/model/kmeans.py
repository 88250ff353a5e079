"""k-means++ seeding and Lloyd iterations: the batch k-means of the learner's refinement
(:mod:`stream_app.model.segmentation`) and of the quality report's reference
(:mod:`stream_app.model.quality`)."""

from __future__ import annotations

import numpy as np


def kmeans_plus_plus(x: np.ndarray, k: int, rng: np.random.Generator, iterations: int = 20
                     ) -> np.ndarray:
    """k-means++ seeding followed by Lloyd iterations on ``x`` (n × d): ``k`` centres."""
    n = len(x)
    centres = np.empty((k, x.shape[1]))
    centres[0] = x[rng.integers(n)]
    d2 = ((x - centres[0]) ** 2).sum(axis=1)
    for i in range(1, k):
        total = d2.sum()
        idx = rng.choice(n, p=d2 / total) if total > 0 else rng.integers(n)
        centres[i] = x[idx]
        d2 = np.minimum(d2, ((x - centres[i]) ** 2).sum(axis=1))
    return lloyd(x, centres, iterations)


def lloyd(x: np.ndarray, centres: np.ndarray, iterations: int = 20) -> np.ndarray:
    """Lloyd iterations from ``centres``: row ``i`` stays centre ``i`` (ids are kept);
    a centre without members stays where it is."""
    centres = np.array(centres, dtype=float, copy=True)
    x2 = (x ** 2).sum(axis=1)[:, None]
    for _ in range(iterations):
        d2 = x2 - 2 * x @ centres.T + (centres ** 2).sum(axis=1)[None, :]
        labels = d2.argmin(axis=1)
        moved = False
        for j in range(len(centres)):
            members = x[labels == j]
            if len(members):
                new = members.mean(axis=0)
                moved = moved or not np.allclose(new, centres[j])
                centres[j] = new
        if not moved:
            break
    return centres
