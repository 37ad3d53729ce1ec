"""What every shape's generator shares: its config's common part, the planted
taste, the result (files + ``recsys-train`` flags), and vectorized helpers for
ids, times, text and writing files."""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import shlex
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from settings.flags import SEEDS, add_flags, from_args, require
from trainer.data.datasets import DatasetOptions
from trainer.data.synthetic import PlantedTaste


@dataclasses.dataclass(frozen=True)
class TasteSpec:
    """The planted structure of a shape (see ``PlantedTaste``), sized by
    densities so that one ``interactions`` knob scales a data set."""

    clusters: int  # latent taste clusters (cuisines, store categories, user roles)
    zipf_exponent: float  # popularity skew: weight of the r-th most popular candidate ~ 1 / r ** exponent
    in_cluster_share: float  # share of a customer's picks from its own cluster (the rest: global popularity)
    per_customer: float  # mean interactions per customer (activity is log-normal around it)
    activity_sigma: float  # spread of the customers' log-normal activity
    per_candidate: float | None = None  # mean interactions per candidate: the catalogue grows with the data...
    candidates: int | None = None  # ... or a fixed catalogue (a web app's tools)

    def __post_init__(self) -> None:
        require(self.clusters >= 1, "clusters", "must be a positive integer")
        require(self.zipf_exponent >= 0, "zipf_exponent", "must be >= 0")
        require(0.0 <= self.in_cluster_share <= 1.0, "in_cluster_share", "must be in [0, 1]")
        require(self.per_customer > 0, "per_customer", "must be positive")
        require(self.activity_sigma >= 0, "activity_sigma", "must be >= 0")
        require((self.per_candidate is None) != (self.candidates is None), "per_candidate",
                "give per_candidate or candidates, not both")
        require(self.per_candidate is None or self.per_candidate > 0, "per_candidate", "must be positive")
        require(self.candidates is None or self.candidates >= self.clusters, "candidates", "must be >= clusters")

    def plant(self, rng: np.random.Generator, interactions: int) -> PlantedTaste:
        """Clusters, popularity and activity for about ``interactions`` interactions."""
        customers = max(self.clusters, round(interactions / self.per_customer))
        candidates = self.candidates or max(self.clusters, round(interactions / self.per_candidate))
        return PlantedTaste(rng, customers, candidates, self.clusters, self.zipf_exponent, self.activity_sigma)


MAX_INTERACTIONS = 100_000_000


@dataclasses.dataclass(frozen=True)
class GeneratorConfig:
    """The knobs every shape has; a shape's config adds its ``taste`` and quirks."""

    interactions: int = 100_000  # interaction rows written (about, where funnels and sessions round)
    seed: int = 0

    def __post_init__(self) -> None:
        # Past this a data set held in memory asks for hundreds of GiB (a MemoryError's traceback, 1e11 rows).
        require(100 <= self.interactions <= MAX_INTERACTIONS, "interactions",
                f"must be from 100 to {MAX_INTERACTIONS:,}")
        require(0 <= self.seed < SEEDS, "seed", "must be an integer in [0, 2**32)")


@dataclasses.dataclass(frozen=True)
class GeneratedData:
    """Files a generator wrote and the ``recsys-train`` data flags that load them."""

    shape: str
    files: tuple[Path, ...]  # the interactions file first
    dataset: str  # recsys-train --dataset
    data_flags: tuple[str, ...]  # the data set's flags (DatasetOptions), after --dataset
    rows: int  # interaction rows written

    @property
    def train_args(self) -> list[str]:
        """``--dataset NAME`` and the data flags: what ``recsys-train`` needs to read the files."""
        return ["--dataset", self.dataset, *self.data_flags]

    def options(self) -> DatasetOptions:
        """The data flags parsed as ``recsys-train`` parses them (``trainer.data.load_dataset``'s options)."""
        parser = argparse.ArgumentParser()
        add_flags(parser, DatasetOptions)
        return from_args(DatasetOptions, parser.parse_args(list(self.data_flags)))

    def command(self, registry: str = "./registry", model: str | None = None) -> str:
        """A shell command that trains on the files and publishes to ``registry``."""
        return shlex.join(["recsys-train", *self.train_args, "--registry", registry, "--model", model or self.shape])


# ---------------------------------------------------------------- drawing


def unique_pairs(rng: np.random.Generator, taste: PlantedTaste, n: int, in_cluster_share: float,
                 rounds: int = 8) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(customer, candidate, own cluster) of ``n`` draws with no repeated pair, in
    draw order: a customer reviews a business or a recipe once. Repeats are
    redrawn (up to ``rounds`` times: a very active customer may run out of
    candidates it would pick)."""
    customers = np.zeros(0, np.int64)
    candidates, own = customers.copy(), np.zeros(0, bool)
    keep = customers
    for _ in range(rounds):
        more = taste.draw_customers(rng, 2 * (n - len(keep)) + 1)
        picks, picks_own = taste.draw_candidates(rng, more, in_cluster_share)
        customers, candidates = np.concatenate([customers, more]), np.concatenate([candidates, picks])
        own = np.concatenate([own, picks_own])
        keep = np.sort(np.unique(customers * taste.num_candidates + candidates, return_index=True)[1])[:n]
        if len(keep) == n:
            break
    return customers[keep], candidates[keep], own[keep]


def graded(rng: np.random.Generator, lift: np.ndarray, shares: Sequence[float], noise: float = 1.0) -> np.ndarray:
    """Grades 0..len(shares)-1 with exactly the given shares, higher where ``lift``
    is: grade by the quantiles of ``lift`` plus logistic noise (a rating that
    follows taste and quality, with Yelp's or Food.com's overall distribution)."""
    score = lift + rng.logistic(0.0, noise, size=len(lift))
    cuts = np.quantile(score, np.cumsum(shares)[:-1] / np.sum(shares))
    return np.searchsorted(cuts, score).astype(np.int64)


def spread_times(rng: np.random.Generator, n: int, first: str, last: str, growth: float = 1.0) -> np.ndarray:
    """``n`` epoch seconds between the ISO dates ``first`` and ``last``; ``growth`` > 1
    puts more of them late (a site whose use grows), < 1 early."""
    lo, hi = (np.datetime64(d, "s").astype(np.int64) for d in (first, last))
    return lo + (rng.random(n) ** (1.0 / growth) * (hi - lo)).astype(np.int64)


def iso_times(seconds: np.ndarray, unit: str = "s", sep: str = "T", suffix: str = "") -> np.ndarray:
    """Epoch seconds as ISO strings: "2019-05-03T14:22:11" (``unit`` "D": the date alone)."""
    text = np.datetime_as_string(np.asarray(seconds, dtype="datetime64[s]").astype(f"datetime64[{unit}]"))
    if sep != "T":
        text = np.char.replace(text, "T", sep)
    return np.char.add(text, suffix) if suffix else text


_BASE64 = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"))


def base64_ids(rng: np.random.Generator, n: int, length: int = 22) -> np.ndarray:
    """``n`` random URL-safe base64 ids (Yelp's 22 characters), distinct."""
    ids = _BASE64[rng.integers(0, 64, size=(n, length))].view(f"<U{length}").ravel()
    if len(np.unique(ids)) != n:  # 64**22: never in practice, but ids must be distinct
        raise ValueError("id collision; use another seed")
    return ids


def distinct_ints(rng: np.random.Generator, n: int, high: int) -> np.ndarray:
    """``n`` distinct random integers in [0, high) (dataset ids that are not 0..n-1)."""
    return rng.choice(high, size=n, replace=False).astype(np.int64)


def pick(rng: np.random.Generator, bank: Sequence[str], n: int) -> np.ndarray:
    """``n`` strings drawn uniformly from ``bank``."""
    return np.asarray(bank)[rng.integers(0, len(bank), size=n)]


def sentences(*parts: np.ndarray) -> list[str]:
    """Row-wise join of string arrays with spaces (review texts from phrase banks)."""
    return [" ".join(row) for row in zip(*parts)]


def subsets(rng: np.random.Generator, pool_size: int, counts: np.ndarray) -> list[np.ndarray]:
    """Per row r, ``counts[r]`` distinct positions in ``range(pool_size)`` (tags or
    ingredients from a pool): the first of a random order."""
    order = np.argsort(rng.random((len(counts), pool_size)), axis=1)
    return [order[r, :count] for r, count in enumerate(np.minimum(counts, pool_size).tolist())]


# ---------------------------------------------------------------- writing


def write_csv(path: Path, columns: dict[str, Sequence[Any]]) -> Path:
    """A CSV with a header row; cells are quoted where needed (commas, quotes in text)."""
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(list(columns))
        writer.writerows(zip(*(_plain(values) for values in columns.values())))
    return path


def write_jsonl(path: Path, columns: dict[str, Sequence[Any]]) -> Path:
    """One JSON object per line, keys in ``columns``' order."""
    names = list(columns)
    dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(dumps(dict(zip(names, row))) + "\n" for row in zip(*(_plain(v) for v in columns.values())))
    return path


def _plain(values: Sequence[Any]) -> list[Any]:
    """Python scalars (numpy's do not serialise to JSON)."""
    return values.tolist() if isinstance(values, np.ndarray) else list(values)
