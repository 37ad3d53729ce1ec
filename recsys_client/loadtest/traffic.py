"""What each scheduled request asks: its customer (uniform or Zipf draws) and its RPC, drawn up front from the
run's seed, so a run's requests depend on the seed alone."""

from __future__ import annotations

import numpy as np

from recsys_client.loadtest.config import DISTRIBUTIONS, RECOMMEND_ONLY, RPCS, LoadConfig


class CustomerSampler:
    """Seeded customer-id draws: ``uniform`` over ranks 0..n-1, or ``zipf`` where
    rank r has weight 1/(r+1)**s, so low ranks (c000000, c000001, ...) are the hot
    customers. A finite Zipf is used, not numpy's unbounded one, so every draw is
    a valid id and the skew does not depend on rejection."""

    def __init__(self, num_customers: int, customer_format: str = "c{:06d}", distribution: str = "uniform",
                 zipf_s: float = 1.1, seed: int = 0):
        if distribution not in DISTRIBUTIONS:
            raise ValueError(f"unknown distribution {distribution!r}")
        self.num_customers = num_customers
        self.customer_format = customer_format
        self.distribution = distribution
        self._rng = np.random.default_rng(seed)
        self._cdf: np.ndarray | None = None
        if distribution == "zipf":
            weights = 1.0 / np.arange(1, num_customers + 1, dtype=np.float64) ** zipf_s
            self._cdf = np.cumsum(weights) / weights.sum()

    def ranks(self, n: int) -> np.ndarray:
        """``n`` customer ranks in 0..num_customers-1."""
        if self._cdf is None:
            return self._rng.integers(0, self.num_customers, size=n)
        # side="right" and the clip guard against the cdf's last entry rounding below 1.
        return np.minimum(np.searchsorted(self._cdf, self._rng.random(n), side="right"), self.num_customers - 1)

    def draw(self, n: int) -> list[str]:
        """``n`` customer ids, formatted with ``customer_format``."""
        return [self.customer_format.format(int(r)) for r in self.ranks(n)]


class RpcDraws:
    """Which RPC each request of a run makes, and what it needs besides its
    customer: a candidate (similar, record) or more customers (batch), drawn
    up front and seeded. A Recommend-only run draws nothing more, so its
    customers are those of earlier versions of this tool."""

    def __init__(self, config: LoadConfig, total: int, sampler: CustomerSampler):
        self.batch_size = config.batch_size
        if config.rpc_mix == RECOMMEND_ONLY:
            self.rpcs = np.zeros(total, np.int8)
        else:
            shares = [config.rpc_mix.get(name, 0.0) for name in RPCS]
            self.rpcs = np.random.default_rng(config.seed + 1).choice(len(RPCS), size=total, p=shares).astype(np.int8)
        batches = np.flatnonzero(self.rpcs == RPCS.index("batch"))
        # A batch's customers after the first, drawn after the run's own so those stay the same.
        self._extra = sampler.draw(len(batches) * (config.batch_size - 1))
        self._batch_slot = {int(i): slot for slot, i in enumerate(batches)}
        self.candidates: list[str] = []
        if {"similar", "record"} & set(config.rpc_mix):
            ranks = np.random.default_rng(config.seed + 2).integers(0, config.num_candidates, size=total)
            self.candidates = [config.candidate_format.format(int(r)) for r in ranks]

    def batch(self, i: int, first: str) -> list[str]:
        """The customers of request ``i``'s BatchRecommend (``first`` is its own draw)."""
        start = self._batch_slot[i] * (self.batch_size - 1)
        return [first, *self._extra[start:start + self.batch_size - 1]]
