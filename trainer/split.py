"""Train/test split of interactions."""

from __future__ import annotations

import numpy as np

from trainer.data import Interactions


def random_split(data: Interactions, test_fraction: float = 0.2, seed: int = 42) -> tuple[Interactions, Interactions]:
    """Seeded uniformly random split of the events into (train, test).

    Random rather than temporal to match the TFRS MovieLens tutorial and the
    reference figures; the same seed gives the same split.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    n = len(data)
    if n < 2:
        raise ValueError("need at least 2 interactions to split")
    perm = np.random.default_rng(seed).permutation(n)
    num_test = max(1, int(round(n * test_fraction)))
    return data.take(np.sort(perm[num_test:])), data.take(np.sort(perm[:num_test]))
