"""One entry point from a data set's name and options to :class:`Interactions`.

``load_dataset(name, options)`` knows

* ``movielens-100k``: the ml-100k folder (``options.data_dir``);
* ``synthetic``: the planted-cluster generator (``options.synthetic``);
* ``interactions-csv``: a generic interactions file (``trainer.data.files``);
* ``sessions``: session click streams (``trainer.data.files``).

``DatasetOptions`` is also the source of the trainer's data flags.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from settings.flags import ConfigError, option, require
from trainer.data.files import FORMATS, file_format, load_interactions_file, load_sessions
from trainer.data.interactions import Interactions
from trainer.data.movielens import check_movielens_dir, load_movielens_100k
from trainer.data.synthetic import SyntheticConfig, synthetic

DATASET_NAMES = ("movielens-100k", "synthetic", "interactions-csv", "sessions")


@dataclasses.dataclass(frozen=True)
class DatasetOptions:
    """Where and how to read a data set.

    Column names address header fields; with ``header=False`` they are 0-based
    column numbers ("0", "2"). ``rating_col``/``time_col`` are optional: without a
    time column the row number is the timestamp (file order). Interactions files
    read their times as epoch seconds (see ``trainer.data.files``).
    """

    data_dir: Path | None = option(None, "the ml-100k folder (movielens-100k only)", parse=Path)
    data_path: Path | None = option(None, "interactions or sessions file (csv, tsv or jsonl)", parse=Path)
    format: str | None = option(None, "file format (default: from the extension)", choices=FORMATS)
    delimiter: str | None = option(None, "field delimiter, overriding the format's (e.g. ';')")
    header: bool = option(True, "the CSV/TSV has a header row (--no-header: columns are 0-based numbers)")
    customer_col: str = option("user_id", "customer id column")
    candidate_col: str = option("item_id", "candidate id column")
    rating_col: str | None = option(None, "rating column (needed by --min-rating)")
    time_col: str | None = option(
        None, "timestamp column: epoch seconds or milliseconds (micro-, nanoseconds) or ISO dates, one kind "
              "(default: file order)")
    min_rating: float | None = option(None, "keep only interactions rated at least this")
    unrated_value: float | None = option(
        None, "rating that means 'reviewed without a rating' (Food.com's 0); --min-rating keeps such rows")
    event_col: str | None = option(None, "event type column (RetailRocket's event: view, addtocart, transaction)")
    events: tuple[str, ...] = option((), "comma-separated event types kept (needs --event-col; default: all)")
    catalog_path: Path | None = option(
        None, "candidate catalogue file; interactions whose candidate it lacks are dropped", parse=Path)
    catalog_format: str | None = option(None, "catalogue file format (default: from the extension)",
                                        choices=FORMATS)
    catalog_id_col: str | None = option(None, "candidate id column of the catalogue (default --candidate-col)")
    catalog_feature_cols: tuple[str, ...] = option((), "comma-separated catalogue columns kept as candidate features")
    catalog_delimiter: str | None = option(None, "catalogue field delimiter, overriding its format's")
    catalog_header: bool = option(True, "the catalogue CSV/TSV has a header row (--no-catalog-header: columns are "
                                        "0-based numbers)")
    session_col: str = option("SessionId", "session id column (sessions)")
    item_col: str = option("ItemId", "item id column (sessions)")
    synthetic: SyntheticConfig = option(SyntheticConfig(), "synthetic data set sizes")

    def __post_init__(self) -> None:
        # Checked here, before TensorFlow loads: the csv module's own complaint is a TypeError mid-run.
        for name, fmt in (("delimiter", "--format"), ("catalog_delimiter", "--catalog-format")):
            value = getattr(self, name)
            require(value is None or len(value) == 1, name,
                    f"must be one character, got {value!r} (for tabs: {fmt} tsv)")
        require(self.min_rating is None or self.rating_col is not None, "min_rating", "needs --rating-col")
        require(self.unrated_value is None or self.min_rating is not None, "unrated_value", "needs --min-rating")
        require(not self.events or self.event_col is not None, "events", "needs --event-col")
        require(self.catalog_path is None or Path(self.catalog_path).is_file(), "catalog_path",
                f"{self.catalog_path} is not a file")


_FILE_OPTIONS = ("data_path", "format", "delimiter", "header", "time_col", "event_col", "events")
# The options each data set reads; the others must keep their defaults.
_READ_BY: dict[str, tuple[str, ...]] = {
    "movielens-100k": ("data_dir",),
    "synthetic": ("synthetic",),
    "interactions-csv": (*_FILE_OPTIONS, "customer_col", "candidate_col", "rating_col", "min_rating", "unrated_value",
                         "catalog_path", "catalog_format", "catalog_id_col", "catalog_feature_cols",
                         "catalog_delimiter", "catalog_header"),
    "sessions": (*_FILE_OPTIONS, "session_col", "item_col"),
}
_WHAT = {"movielens-100k": "the ml-100k folder given by --data-dir", "synthetic": "generated, sized by --synthetic-*",
         "interactions-csv": "a file of customer, candidate and optional rating, time and event columns",
         "sessions": "events of sessions, without ratings or a catalogue"}


def check_options(name: str, options: DatasetOptions) -> None:
    """Cheap checks of what ``name`` needs, before any loading; raises ConfigError
    naming the field."""
    require(name in DATASET_NAMES, "dataset", f"unknown dataset {name!r}; choose one of {', '.join(DATASET_NAMES)}")
    if name == "movielens-100k":
        require(options.data_dir is not None, "data_dir", "is required for --dataset movielens-100k "
                                                          "(the ml-100k folder)")
        try:
            check_movielens_dir(options.data_dir)
        except ValueError as e:
            raise ConfigError("data_dir", str(e)) from None
    if name in ("interactions-csv", "sessions"):
        require(options.data_path is not None, "data_path", f"is required for --dataset {name}")
        require(Path(options.data_path).is_file(), "data_path", f"{options.data_path} is not a file")
        try:
            file_format(options.data_path, options.format)
        except ValueError as e:
            raise ConfigError("format", str(e)) from None
    # Refused, not taken and ignored: a run that reads none of them says nothing.
    for field in dataclasses.fields(DatasetOptions):
        value = getattr(options, field.name)
        if field.name not in _READ_BY[name] and value != field.default:
            readers = " or ".join(other for other in DATASET_NAMES if field.name in _READ_BY[other])
            where = field.name
            if dataclasses.is_dataclass(value):  # named by a field set in it, so the error names that one's flag
                where += "." + next(f.name for f in dataclasses.fields(value)
                                    if getattr(value, f.name) != getattr(field.default, f.name))
            raise ConfigError(where, f"is not read by --dataset {name} ({_WHAT[name]}): leave it out, or use "
                                     f"--dataset {readers}")


def load_dataset(name: str, options: DatasetOptions | None = None, seed: int = 42) -> Interactions:
    """Loads data set ``name`` (one of ``DATASET_NAMES``) as configured by
    ``options``; ``seed`` is the synthetic generator's."""
    options = options or DatasetOptions()
    check_options(name, options)
    if name == "movielens-100k":
        return load_movielens_100k(options.data_dir)
    if name == "synthetic":
        s = options.synthetic
        return synthetic(s.num_customers, s.num_candidates, s.num_interactions, s.num_clusters, seed=seed)
    if name == "interactions-csv":
        return load_interactions_file(options)
    return load_sessions(options)
