"""Interaction data sets: MovieLens 100K and a synthetic generator with planted structure.

Everything is plain numpy (pandas is not a dependency); the synthetic generator
is fully vectorized so that it scales to millions of customers and tens of
millions of interactions.
"""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path
from typing import Any

import numpy as np



@dataclasses.dataclass
class Interactions:
    """Implicit-feedback events: customer ``customer_ids[i]`` interacted with
    candidate ``candidate_ids[i]`` at ``timestamps[i]``.

    ``catalog`` is the full candidate universe (sorted, unique); it can be larger
    than the set of candidates that occur in the interactions (MovieLens lists
    items in u.item).

    Feature tables are optional, columnar (``column -> np.ndarray``) and aligned
    with a sorted unique id array:

    * ``candidate_features[col][j]`` describes candidate ``catalog[j]`` (every
      array has ``len(catalog)`` rows; candidates without a record get "" / NaN).
    * ``customer_features[col][r]`` describes customer ``customer_feature_ids[r]``
      (sorted unique; need not cover every customer of the interactions, e.g. a
      customer seen only in test). Look rows up with :meth:`customer_feature_rows`.

    String columns are numpy unicode arrays, numeric ones float32 (NaN = missing).
    ``take`` shares the tables (they describe ids, not events).
    """

    customer_ids: np.ndarray  # unicode [n]
    candidate_ids: np.ndarray  # unicode [n]
    timestamps: np.ndarray  # int64 [n]
    catalog: np.ndarray | None = None  # unicode [N], sorted unique
    customer_features: dict[str, np.ndarray] | None = None  # column -> [len(customer_feature_ids)]
    name: str = "interactions"
    customer_feature_ids: np.ndarray | None = None  # unicode [M], sorted unique
    candidate_features: dict[str, np.ndarray] | None = None  # column -> [len(catalog)]
    # What a loader read, dropped and how fast (counts, rows_per_second); shared by take().
    info: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.customer_ids)
        if len(self.candidate_ids) != n or len(self.timestamps) != n:
            raise ValueError(
                f"customer_ids ({n}), candidate_ids ({len(self.candidate_ids)}) and "
                f"timestamps ({len(self.timestamps)}) must have the same length"
            )
        if self.catalog is None:
            self.catalog = np.unique(self.candidate_ids)
        if self.candidate_features is not None:
            for col, values in self.candidate_features.items():
                if len(values) != len(self.catalog):
                    raise ValueError(f"candidate feature {col!r} has {len(values)} rows, "
                                     f"catalog has {len(self.catalog)}")
        if self.customer_features is not None:
            if self.customer_feature_ids is None:
                raise ValueError("customer_features needs customer_feature_ids (sorted unique ids)")
            for col, values in self.customer_features.items():
                if len(values) != len(self.customer_feature_ids):
                    raise ValueError(f"customer feature {col!r} has {len(values)} rows, "
                                     f"customer_feature_ids has {len(self.customer_feature_ids)}")

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

    @property
    def candidate_titles(self) -> dict[str, str] | None:
        """``{candidate id: title}`` from ``candidate_features["title"]`` (None without titles).

        Kept for backward compatibility; prefer the columnar ``candidate_features``.
        """
        if not self.candidate_features or "title" not in self.candidate_features:
            return None
        return dict(zip(self.catalog.tolist(), self.candidate_features["title"].tolist()))

    def candidate_feature_rows(self, ids: np.ndarray) -> np.ndarray:
        """Rows of ``ids`` in the candidate feature table (= catalog positions); -1 where absent."""
        return _index_of(self.catalog, np.asarray(ids))

    def customer_feature_rows(self, ids: np.ndarray) -> np.ndarray:
        """Rows of ``ids`` in the customer feature table; -1 where absent (or no table)."""
        ids = np.asarray(ids)
        if self.customer_feature_ids is None or len(self.customer_feature_ids) == 0:
            return np.full(len(ids), -1, dtype=np.int64)
        return _index_of(self.customer_feature_ids, ids)


def _index_of(sorted_ids: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Positions of ``ids`` in the sorted unique array ``sorted_ids``; -1 where absent."""
    if len(sorted_ids) == 0:
        return np.full(len(ids), -1, dtype=np.int64)
    pos = np.minimum(np.searchsorted(sorted_ids, ids), len(sorted_ids) - 1)
    return np.where(sorted_ids[pos] == ids, pos, -1).astype(np.int64)


def align_features(table_ids: np.ndarray, columns: dict[str, np.ndarray],
                   target_ids: np.ndarray) -> dict[str, np.ndarray]:
    """Reorders columnar features keyed by ``table_ids`` onto sorted ``target_ids``.

    Rows of ``target_ids`` missing from the table get "" (string columns) or NaN
    (numeric columns, which become float32). Duplicate table ids: the last wins.
    """
    table_ids = np.asarray(table_ids).astype(str)
    target_ids = np.asarray(target_ids)
    order = np.argsort(table_ids, kind="stable")
    sorted_ids = table_ids[order]
    # keep the last of equal ids
    last = np.ones(len(sorted_ids), dtype=bool)
    last[:-1] = sorted_ids[1:] != sorted_ids[:-1]
    order, sorted_ids = order[last], sorted_ids[last]
    rows = _index_of(sorted_ids, target_ids)
    found = rows >= 0
    src = order[np.where(found, rows, 0)] if len(order) else np.zeros(len(target_ids), dtype=np.int64)
    out: dict[str, np.ndarray] = {}
    for col, values in columns.items():
        values = np.asarray(values)
        if values.dtype.kind in "US":
            aligned = values[src] if len(values) else np.full(len(target_ids), "", dtype=str)
            out[col] = np.where(found, aligned, "").astype(str)
        else:
            vals = values.astype(np.float32)
            aligned = vals[src] if len(vals) else np.zeros(len(target_ids), np.float32)
            out[col] = np.where(found, aligned, np.float32(np.nan)).astype(np.float32)
    return out


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

    catalog = np.unique(candidates)
    candidate_features: dict[str, np.ndarray] | None = None
    item_path = data_dir / "u.item"
    if item_path.is_file():
        item_ids, item_columns = _movielens_items(item_path, data_dir / "u.genre")
        catalog = np.unique(np.concatenate([catalog, item_ids]))
        candidate_features = align_features(item_ids, item_columns, catalog)

    users: dict[str, np.ndarray] | None = None
    user_ids: np.ndarray | None = None
    user_path = data_dir / "u.user"
    if user_path.is_file():
        with open(user_path, encoding="latin-1", newline="") as f:
            rows = [r for r in csv.reader(f, delimiter="|") if r]
        cols = list(zip(*rows))
        user_ids = np.unique(np.array(cols[0], dtype=str))
        users = align_features(np.array(cols[0], dtype=str), {
            "age": np.array(cols[1], dtype=np.float32),
            "gender": np.array(cols[2], dtype=str),
            "occupation": np.array(cols[3], dtype=str),
            "zip": np.array(cols[4], dtype=str),
        }, user_ids)
    return Interactions(
        customer_ids=customers,
        candidate_ids=candidates,
        timestamps=raw[:, 3],
        catalog=catalog,
        customer_features=users,
        customer_feature_ids=user_ids,
        candidate_features=candidate_features,
        name="movielens-100k",
    )


MOVIELENS_GENRES = ("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
                    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
                    "Romance", "Sci-Fi", "Thriller", "War", "Western")


def _movielens_items(item_path: Path, genre_path: Path) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """u.item -> (ids, {title, genres ('|'-joined names), release_year (float32, NaN if missing)})."""
    genres = list(MOVIELENS_GENRES)
    if genre_path.is_file():
        with open(genre_path, encoding="latin-1", newline="") as f:
            named = [r for r in csv.reader(f, delimiter="|") if len(r) >= 2]
        if named:
            genres = [""] * (max(int(r[1]) for r in named) + 1)
            for r in named:
                genres[int(r[1])] = r[0]
    # u.item is latin-1 (accented titles) and '|'-separated.
    with open(item_path, encoding="latin-1", newline="") as f:
        rows = [r for r in csv.reader(f, delimiter="|") if r]
    ids = np.array([r[0] for r in rows], dtype=str)
    titles = np.array([r[1] if len(r) > 1 else "" for r in rows], dtype=str)
    years = np.array([float(r[2][-4:]) if len(r) > 2 and r[2][-4:].isdigit() else np.nan for r in rows],
                     dtype=np.float32)
    names = np.array(genres, dtype=object)
    joined = []
    for r in rows:
        flags = np.array([f == "1" for f in r[5:5 + len(genres)]], dtype=bool)
        joined.append("|".join(names[:len(flags)][flags]))
    return ids, {"title": titles, "genres": np.array(joined, dtype=str), "release_year": years}


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
    cust = search_right(activity_cdf, rng.random(num_interactions))
    cust = np.minimum(cust, num_customers - 1)

    own = rng.random(num_interactions) < in_cluster_share
    cl = customer_cluster[cust]
    target = seg_lo[cl] + rng.random(num_interactions) * (seg_hi[cl] - seg_lo[cl])
    pos = search_right(sorted_cum, target)
    pos = np.clip(pos, start[cl], end[cl] - 1)  # float edge cases stay in the cluster
    in_cluster_pick = order[pos]
    global_pick = np.minimum(search_right(global_cdf, rng.random(num_interactions)),
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
