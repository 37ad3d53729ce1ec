"""Interaction data sets: MovieLens 100K and a synthetic generator with planted structure.

Everything is plain numpy (pandas is not a dependency); the synthetic generator
is fully vectorized so that it scales to millions of customers and tens of
millions of interactions.
"""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import numpy as np

DATASETS = ("movielens-100k", "synthetic")


@dataclasses.dataclass
class Interactions:
    """Implicit-feedback events: customer ``customer_ids[i]`` interacted with
    candidate ``candidate_ids[i]`` at ``timestamps[i]``.

    ``catalog`` is the full candidate universe (sorted, unique); it can be larger
    than the set of candidates that occur in the interactions (MovieLens lists
    items in u.item). Feature tables are optional and keyed by id.
    """

    customer_ids: np.ndarray  # unicode [n]
    candidate_ids: np.ndarray  # unicode [n]
    timestamps: np.ndarray  # int64 [n]
    catalog: np.ndarray | None = None  # unicode [N], sorted unique
    candidate_titles: dict[str, str] | None = None
    customer_features: dict[str, np.ndarray] | None = None  # column -> array aligned with customer table
    name: str = "interactions"

    def __post_init__(self) -> None:
        n = len(self.customer_ids)
        if len(self.candidate_ids) != n or len(self.timestamps) != n:
            raise ValueError(
                f"customer_ids ({n}), candidate_ids ({len(self.candidate_ids)}) and "
                f"timestamps ({len(self.timestamps)}) must have the same length"
            )
        if self.catalog is None:
            self.catalog = np.unique(self.candidate_ids)

    def __len__(self) -> int:
        return len(self.customer_ids)

    def take(self, index: np.ndarray) -> "Interactions":
        """A subset of the events (by integer index); catalog and features are shared."""
        return dataclasses.replace(
            self,
            customer_ids=self.customer_ids[index],
            candidate_ids=self.candidate_ids[index],
            timestamps=self.timestamps[index],
        )

    @property
    def num_customers(self) -> int:
        return len(np.unique(self.customer_ids))


def _require_file(data_dir: Path, name: str) -> Path:
    path = data_dir / name
    if not path.is_file():
        raise ValueError(f"{name} not found in {data_dir}: pass --data-dir pointing at the ml-100k folder")
    return path


def check_movielens_dir(data_dir: str | Path) -> Path:
    """Raises ValueError unless ``data_dir`` is a folder holding u.data; returns u.data's path."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise ValueError(f"{data_dir} is not a directory: pass --data-dir pointing at the ml-100k folder")
    return _require_file(data_dir, "u.data")


def load_movielens_100k(data_dir: str | Path) -> Interactions:
    """Loads MovieLens 100K (the ``ml-100k`` folder) as implicit interactions.

    Every rating counts as an interaction regardless of its value, as in the
    TFRS retrieval tutorial. Ids are kept as strings ("196", "242", ...). The
    catalog is every movie in u.item (1682), titles come from u.item, and the
    user table (age, gender, occupation, zip) from u.user when present.
    """
    data_dir = Path(data_dir)
    ratings_path = check_movielens_dir(data_dir)
    try:
        raw = np.loadtxt(ratings_path, dtype=np.int64, delimiter="\t", ndmin=2)
    except ValueError as e:
        raise ValueError(f"{ratings_path} is not a tab-separated user/item/rating/timestamp file: {e}") from None
    if raw.shape[1] != 4 or raw.shape[0] == 0:
        raise ValueError(f"{ratings_path} must have 4 tab-separated columns, got shape {raw.shape}")
    customers = raw[:, 0].astype(str)
    candidates = raw[:, 1].astype(str)

    titles: dict[str, str] | None = None
    catalog = np.unique(candidates)
    item_path = data_dir / "u.item"
    if item_path.is_file():
        # u.item is latin-1 (accented titles) and '|'-separated.
        with open(item_path, encoding="latin-1", newline="") as f:
            rows = [r for r in csv.reader(f, delimiter="|") if r]
        titles = {r[0]: r[1] for r in rows}
        catalog = np.unique(np.concatenate([catalog, np.array(list(titles), dtype=str)]))

    users: dict[str, np.ndarray] | None = None
    user_path = data_dir / "u.user"
    if user_path.is_file():
        with open(user_path, encoding="latin-1", newline="") as f:
            rows = [r for r in csv.reader(f, delimiter="|") if r]
        cols = list(zip(*rows))
        users = {
            "customer_id": np.array(cols[0], dtype=str),
            "age": np.array(cols[1], dtype=np.int64),
            "gender": np.array(cols[2], dtype=str),
            "occupation": np.array(cols[3], dtype=str),
            "zip": np.array(cols[4], dtype=str),
        }
    return Interactions(
        customer_ids=customers,
        candidate_ids=candidates,
        timestamps=raw[:, 3],
        catalog=catalog,
        candidate_titles=titles,
        customer_features=users,
        name="movielens-100k",
    )


@dataclasses.dataclass(frozen=True)
class SyntheticTruth:
    """The planted structure, for tests and sanity checks."""

    customer_cluster: np.ndarray  # int [num_customers]
    candidate_cluster: np.ndarray  # int [num_candidates]
    from_own_cluster: np.ndarray  # bool [num_interactions]


def _ids(prefix: str, n: int) -> np.ndarray:
    width = max(6, len(str(n - 1)))
    return np.char.add(prefix, np.char.zfill(np.arange(n).astype(str), width))


def synthetic(
    num_customers: int = 2_000,
    num_candidates: int = 1_000,
    num_interactions: int = 60_000,
    num_clusters: int = 20,
    seed: int = 42,
    in_cluster_share: float = 0.8,
    zipf_exponent: float = 1.0,
    return_truth: bool = False,
) -> Interactions | tuple[Interactions, SyntheticTruth]:
    """Generates interactions with a planted cluster structure.

    Customers and candidates each belong to one of ``num_clusters`` latent
    clusters. Each interaction picks a customer (with a log-normal activity
    skew), then with probability ``in_cluster_share`` a candidate of the
    customer's cluster (Zipf-like popularity inside the cluster), otherwise a
    candidate from the global Zipf popularity. Ids look like "c000123" and
    "i000045". Fully vectorized: sampling is inverse-CDF via searchsorted.
    """
    if min(num_customers, num_candidates, num_interactions, num_clusters) < 1:
        raise ValueError("synthetic sizes and num_clusters must all be positive")
    if num_clusters > num_candidates or num_clusters > num_customers:
        raise ValueError(
            f"num_clusters ({num_clusters}) cannot exceed num_candidates ({num_candidates}) "
            f"or num_customers ({num_customers})"
        )
    if not 0.0 <= in_cluster_share <= 1.0:
        raise ValueError("in_cluster_share must be in [0, 1]")
    rng = np.random.default_rng(seed)

    # Round-robin then shuffle so that every cluster has members.
    customer_cluster = rng.permutation(np.arange(num_customers) % num_clusters)
    candidate_cluster = rng.permutation(np.arange(num_candidates) % num_clusters)

    # Global Zipf popularity over a random ordering of the candidates.
    pop_rank = rng.permutation(num_candidates)
    weight = 1.0 / (pop_rank + 1.0) ** zipf_exponent
    global_cdf = np.cumsum(weight)
    global_cdf /= global_cdf[-1]

    # In-cluster sampling: lay candidates out cluster by cluster (stable sort) and
    # use one cumulative-weight array; a cluster is a contiguous CDF segment.
    order = np.argsort(candidate_cluster, kind="stable")
    sorted_cum = np.cumsum(weight[order])
    counts = np.bincount(candidate_cluster, minlength=num_clusters)
    end = np.cumsum(counts)
    start = end - counts
    seg_lo = np.where(start > 0, sorted_cum[np.maximum(start - 1, 0)], 0.0)
    seg_hi = sorted_cum[end - 1]

    activity = rng.lognormal(0.0, 1.0, size=num_customers)
    activity_cdf = np.cumsum(activity)
    activity_cdf /= activity_cdf[-1]
    cust = np.searchsorted(activity_cdf, rng.random(num_interactions), side="right")
    cust = np.minimum(cust, num_customers - 1)

    own = rng.random(num_interactions) < in_cluster_share
    cl = customer_cluster[cust]
    target = seg_lo[cl] + rng.random(num_interactions) * (seg_hi[cl] - seg_lo[cl])
    pos = np.searchsorted(sorted_cum, target, side="right")
    pos = np.clip(pos, start[cl], end[cl] - 1)  # float edge cases stay in the cluster
    in_cluster_pick = order[pos]
    global_pick = np.minimum(np.searchsorted(global_cdf, rng.random(num_interactions), side="right"),
                             num_candidates - 1)
    cand = np.where(own, in_cluster_pick, global_pick)

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
        return data, SyntheticTruth(customer_cluster, candidate_cluster, own)
    return data
