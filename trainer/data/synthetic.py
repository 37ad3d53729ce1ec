"""A synthetic interaction generator with planted cluster structure (the demo's
data set; nothing to download). Fully vectorized, so it scales to millions of
customers and tens of millions of interactions."""

from __future__ import annotations

import dataclasses

import numpy as np

from settings.flags import option, require
from trainer.data.interactions import Interactions


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
    """Sizes of the synthetic data set (default: the demo's)."""

    num_customers: int = option(2_000, "synthetic data set: customers", flag="synthetic-customers")
    num_candidates: int = option(1_000, "synthetic data set: candidates", flag="synthetic-candidates")
    num_interactions: int = option(60_000, "synthetic data set: interactions", flag="synthetic-interactions")
    num_clusters: int = option(20, "synthetic data set: planted clusters", flag="synthetic-clusters")

    def __post_init__(self) -> None:
        for name in ("num_customers", "num_candidates", "num_interactions", "num_clusters"):
            require(getattr(self, name) >= 1, name, "must be a positive integer")
        require(self.num_clusters <= min(self.num_customers, self.num_candidates), "num_clusters",
                f"is {self.num_clusters}: at most the customers' ({self.num_customers}) and candidates' "
                f"({self.num_candidates}) numbers, each cluster holding at least one of each")


@dataclasses.dataclass(frozen=True)
class SyntheticTruth:
    """The planted structure, for tests and sanity checks."""

    customer_cluster: np.ndarray  # int [num_customers]
    candidate_cluster: np.ndarray  # int [num_candidates]
    from_own_cluster: np.ndarray  # bool [num_interactions]


def search_right(cum: np.ndarray, values: np.ndarray) -> np.ndarray:
    """``np.searchsorted(cum, values, side="right")`` for a non-decreasing ``cum``
    with ``0 <= values < cum[-1]``, via a guide table (Chen's method).

    A plain binary search over a million-entry CDF costs ~20 cache misses per
    query; the guide table jumps to the right bucket in one lookup and then steps
    forward (about one step on average), several times faster for 10M draws.
    Results are identical to searchsorted's (the forward steps are exact).
    """
    n = len(cum)
    total = float(cum[-1])
    guide = np.searchsorted(cum, np.arange(n) * (total / n), side="right")
    bucket = (values * (n / total)).astype(np.int64) - 1  # one bucket early: float rounding stays safe
    np.clip(bucket, 0, n - 1, out=bucket)
    pos = guide[bucket]
    todo = np.flatnonzero(cum[np.minimum(pos, n - 1)] <= values)
    while todo.size:
        pos[todo] += 1
        p = pos[todo]
        todo = todo[(p < n) & (cum[np.minimum(p, n - 1)] <= values[todo])]
    return pos


def _ids(prefix: str, n: int) -> np.ndarray:
    width = max(6, len(str(n - 1)))
    return np.char.add(prefix, np.char.zfill(np.arange(n).astype(str), width))


def balanced_clusters(rng: np.random.Generator, n: int, num_clusters: int) -> np.ndarray:
    """A cluster per member, every cluster non-empty when ``n >= num_clusters``
    (round-robin, then shuffled)."""
    return rng.permutation(np.arange(n) % num_clusters)


def normalized_cdf(weight: np.ndarray) -> np.ndarray:
    """The cumulative distribution of non-negative ``weight``, ending at 1 (for ``search_right``)."""
    cdf = np.cumsum(weight, dtype=np.float64)
    return cdf / cdf[-1]


class PlantedTaste:
    """Latent taste clusters with a Zipf popularity skew, the structure every
    generator plants (the ``synthetic`` data set and ``trainer.data.generators``).

    Customers and candidates each belong to one of ``num_clusters`` clusters.
    Candidates get Zipf popularity weights ``1 / rank ** zipf_exponent`` over a
    random ordering, customers a log-normal activity. A draw for a customer takes,
    with probability ``in_cluster_share``, a candidate of the customer's cluster
    (by popularity within it), otherwise one from the global popularity; a
    popularity baseline is thus a real competitor, and the clusters are what a
    model can learn beyond it. Immutable after construction; draws take the
    caller's ``rng``.
    """

    def __init__(self, rng: np.random.Generator, num_customers: int, num_candidates: int, num_clusters: int,
                 zipf_exponent: float = 1.0, activity_sigma: float = 1.0):
        if min(num_customers, num_candidates, num_clusters) < 1:
            raise ValueError("sizes and num_clusters must all be positive")
        if num_clusters > num_candidates or num_clusters > num_customers:
            raise ValueError(
                f"num_clusters ({num_clusters}) cannot exceed num_candidates ({num_candidates}) "
                f"or num_customers ({num_customers})"
            )
        self.customer_cluster = balanced_clusters(rng, num_customers, num_clusters)
        self.candidate_cluster = balanced_clusters(rng, num_candidates, num_clusters)
        pop_rank = rng.permutation(num_candidates)
        self.weight = 1.0 / (pop_rank + 1.0) ** zipf_exponent
        self.activity = rng.lognormal(0.0, activity_sigma, size=num_customers)
        self._global_cdf = normalized_cdf(self.weight)
        self._activity_cdf = normalized_cdf(self.activity)
        # In-cluster sampling: lay candidates out cluster by cluster (stable sort) and
        # use one cumulative-weight array; a cluster is a contiguous CDF segment.
        self._order = np.argsort(self.candidate_cluster, kind="stable")
        self._sorted_cum = np.cumsum(self.weight[self._order])
        counts = np.bincount(self.candidate_cluster, minlength=num_clusters)
        self._end = np.cumsum(counts)
        self._start = self._end - counts
        self._seg_lo = np.where(self._start > 0, self._sorted_cum[np.maximum(self._start - 1, 0)], 0.0)
        self._seg_hi = self._sorted_cum[self._end - 1]

    @property
    def num_customers(self) -> int:
        return len(self.customer_cluster)

    @property
    def num_candidates(self) -> int:
        return len(self.candidate_cluster)

    def draw_customers(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """``n`` customers, each as likely as its activity."""
        return np.minimum(search_right(self._activity_cdf, rng.random(n)), self.num_customers - 1)

    def draw_popular(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """``n`` candidates by global popularity alone."""
        return np.minimum(search_right(self._global_cdf, rng.random(n)), self.num_candidates - 1)

    def draw_in_cluster(self, rng: np.random.Generator, clusters: np.ndarray) -> np.ndarray:
        """A candidate of each of ``clusters`` (cluster numbers), by popularity within it."""
        target = self._seg_lo[clusters] + rng.random(len(clusters)) * (self._seg_hi[clusters] - self._seg_lo[clusters])
        pos = search_right(self._sorted_cum, target)
        pos = np.clip(pos, self._start[clusters], self._end[clusters] - 1)  # float edge cases stay in the cluster
        return self._order[pos]

    def draw_candidates(self, rng: np.random.Generator, customers: np.ndarray,
                        in_cluster_share: float) -> tuple[np.ndarray, np.ndarray]:
        """(candidate, from the customer's own cluster) for each of ``customers``."""
        if not 0.0 <= in_cluster_share <= 1.0:
            raise ValueError("in_cluster_share must be in [0, 1]")
        n = len(customers)
        own = rng.random(n) < in_cluster_share
        in_cluster_pick = self.draw_in_cluster(rng, self.customer_cluster[customers])
        return np.where(own, in_cluster_pick, self.draw_popular(rng, n)), own


IN_CLUSTER_SHARE = 0.8  # of a customer's picks, the share from its own cluster (the rest: global popularity)


def synthetic(
    num_customers: int,
    num_candidates: int,
    num_interactions: int,
    num_clusters: int,
    seed: int = 42,
    return_truth: bool = False,
) -> Interactions | tuple[Interactions, SyntheticTruth]:
    """Generates interactions with a planted cluster structure (``PlantedTaste``).

    Each interaction picks a customer (with a log-normal activity skew), then a
    candidate by the customer's taste. Ids look like "c000123" and "i000045".
    Fully vectorized: sampling is inverse-CDF via ``search_right``.
    """
    if min(num_customers, num_candidates, num_interactions, num_clusters) < 1:
        raise ValueError("synthetic sizes and num_clusters must all be positive")
    rng = np.random.default_rng(seed)
    taste = PlantedTaste(rng, num_customers, num_candidates, num_clusters)
    cust = taste.draw_customers(rng, num_interactions)
    cand, own = taste.draw_candidates(rng, cust, IN_CLUSTER_SHARE)

    timestamps = np.sort(rng.integers(1_600_000_000, 1_700_000_000, size=num_interactions, dtype=np.int64))
    customer_names = _ids("c", num_customers)
    candidate_names = _ids("i", num_candidates)
    data = Interactions(
        customer_ids=customer_names[cust],
        candidate_ids=candidate_names[cand],
        timestamps=timestamps,
        catalog=candidate_names,  # already sorted: zero-padded
        name="synthetic",
    )
    if return_truth:
        return data, SyntheticTruth(taste.customer_cluster, taste.candidate_cluster, own)
    return data
