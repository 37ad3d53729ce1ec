"""MovieLens 100K (the ``ml-100k`` folder) as interactions with user and movie features."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from model_registry.attributes import LIST_SEPARATOR
from trainer.data.interactions import Interactions, align_features


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
        joined.append(LIST_SEPARATOR.join(names[:len(flags)][flags]))
    return ids, {"title": titles, "genres": np.array(joined, dtype=str), "release_year": years}
