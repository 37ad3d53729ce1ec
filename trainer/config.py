"""Configuration of a training run: the knobs (each a ``recsys-train`` flag),
the typed presets a run starts from, and the run itself (data, split,
registry). TensorFlow-free, so a bad flag is reported before TensorFlow loads.

A preset is where a tower family's training starts, the same on every data
set; flags given on the command line replace single fields of it. The whole config is
validated when it is built, before any data is read.
"""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path

from model_registry import signing
from model_registry.registry import check_model_name
from settings.flags import MAX_INT32, SEEDS, ConfigError, option, require, require_valid
from trainer.data import DATASET_NAMES, SPLITS, DatasetOptions
from trainer.data.datasets import check_options
from trainer.towers.config import TOWERS, TowerConfig

OPTIMIZERS = ("adagrad", "adam")
# "in_batch": sampled softmax over the batch's candidates (logQ-corrected; scales to
# any catalog). "catalog": exact softmax over every catalog candidate each step (no
# sampling bias, so no logQ; costs batch x catalog scores, fine up to ~100k candidates).
NEGATIVES = ("in_batch", "catalog")
VALIDATION_KS = (10, 100)
MONITORS = tuple(f"{kind}@{k}" for kind in ("hit_rate", "hit_rate_excluding_seen") for k in VALIDATION_KS)


def informative_monitor(monitor: str, candidates: int) -> str:
    """``monitor``, or the same rate at the largest of ``VALIDATION_KS`` below ``candidates`` when its own K is
    not: a hit rate at K >= the catalogue's size is 1 at every epoch, so early stopping would keep the first."""
    kind, k = monitor.rsplit("@", 1)
    if int(k) < candidates:
        return monitor
    return next((f"{kind}@{smaller}" for smaller in sorted(VALIDATION_KS, reverse=True) if smaller < candidates),
                monitor)


# The most a temperature, and a prior weight times it (the query constant the index scores log popularity with),
# may be. Scores are float32: past this the prior's term, up to ~20 x the constant, leaves a dot product (units to
# hundreds) fewer bits than it needs, and from ~1e37 on every score is inf (1e39 was published so, recall "0.90").
MAX_SCORE_SCALE = 1e6


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """The towers' architecture and how they are trained."""

    towers: TowerConfig = option(TowerConfig(), "tower architecture")
    max_epochs: int = option(30, "maximum epochs of the early-stopped run, which usually stops sooner (the refit "
                                 "then trains its best epoch's count plus --refit-extra-epochs)", flag="epochs")
    batch_size: int = option(512, "training batch size (also the in-batch negatives per positive)")
    optimizer: str = option("adagrad", "optimizer", choices=OPTIMIZERS)
    learning_rate: float = option(0.1, "learning rate")
    temperature: float = option(1.0, "softmax temperature (< 1 with normalised embeddings)")
    logq_correction: bool = option(True, "logQ sampling-bias correction of in-batch negatives", flag="logq")
    remove_accidental_hits: bool = option(True, "remove in-batch negatives equal to the positive")
    negatives: str = option("in_batch", "negatives: in-batch (sampled) or the whole catalog (exact softmax)",
                            choices=NEGATIVES)
    validation_fraction: float = option(0.1, "share of the training interactions held out to choose on: early "
                                             "stopping, the search, the baselines' settings, the prior")
    # After early stopping picks the epoch count on the validation part, a fresh model
    # trains on all training interactions for that many epochs (+ refit_extra_epochs,
    # as the data grew by the validation share). Costs a second run; on ml-100k it
    # lifts hit rate excluding seen @10 by about 0.005.
    refit: bool = option(True, "retrain on all training data for the chosen number of epochs (--no-refit "
                               "keeps the early-stopped model and halves training time)")
    refit_extra_epochs: int = option(1, "epochs the refit adds to the early-stopped count")
    prior_weight: float | None = option(
        None, "popularity prior weight on the logit scale (0: none; 1 with --no-logq: what in-batch sampling took "
              "out); default: chosen on the validation split")
    patience: int = option(2, "epochs without improvement before early stopping")
    monitor: str = option("hit_rate_excluding_seen@100", "validation metric early stopping watches",
                          choices=MONITORS)
    max_validation_interactions: int = option(20_000, "validation interactions evaluated per epoch (sampled)")
    seed: int = option(42, "split, initialization and synthetic-data seed")

    def __post_init__(self) -> None:
        for name in ("max_epochs", "batch_size", "patience", "max_validation_interactions"):
            require(getattr(self, name) >= 1, name, "must be a positive integer")
        require(self.batch_size <= MAX_INT32, "batch_size", "must be below 2**31")
        require(self.refit_extra_epochs >= 0, "refit_extra_epochs", "must be >= 0")
        for name in ("learning_rate", "temperature"):  # inf: a temperature that zeroes every logit, a NaN step
            require(0 < getattr(self, name) < math.inf, name, "must be positive and finite")
        require(self.temperature <= MAX_SCORE_SCALE, "temperature", f"must be at most {MAX_SCORE_SCALE:g}")
        require(self.optimizer in OPTIMIZERS, "optimizer", f"must be one of {', '.join(OPTIMIZERS)}")
        require(self.negatives in NEGATIVES, "negatives", f"must be one of {', '.join(NEGATIVES)}")
        require(self.monitor in MONITORS, "monitor", f"must be one of {', '.join(MONITORS)}")
        require(0.0 <= self.validation_fraction < 1.0, "validation_fraction", "must be in [0, 1)")
        require(self.prior_weight is None or 0 <= self.prior_weight * self.temperature <= MAX_SCORE_SCALE,
                "prior_weight", f"must be >= 0, and times the temperature at most {MAX_SCORE_SCALE:g}")
        # It seeds numpy's global generator too (tf.keras.utils.set_random_seed).
        require(0 <= self.seed < SEEDS, "seed", "must be an integer in [0, 2**32)")


def _preset(kind: str, **tower: object) -> TrainConfig:
    return TrainConfig(towers=TowerConfig(kind=kind, **tower))


# Per tower family, where training starts on any data set: what `--tune-budget-s 0`
# trains and the default search's first trials (trial 0 the family asked for, then
# the others), which it moves on from within its budget. The history family's L2
# and history dropout were chosen by validation lift over six generated data shapes
# (docs/RESULTS.md, "One start for every data set"): they beat the unregularised
# start on four, by up to 7%, and trailed it by 1% at most.
PRESETS: dict[str, TrainConfig] = {
    "id": _preset("id"),
    "features": _preset("features"),
    "history": _preset("history", use_customer_id=True, l2=0.03, history_dropout=0.3),
    "sequence": _preset("sequence", use_customer_id=True),
}
# A catalogue column a candidate tower takes is a SavedModel input of the same name. TensorFlow refuses
# other names (a space) or renames them ("sub-category" to "sub_category"), which upserts could not fill.
_TOWER_INPUT_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")


def recommended_config(tower: str | None = None) -> TrainConfig:
    """The preset of tower family ``tower`` (default: ``TowerConfig``'s)."""
    tower = tower or TowerConfig().kind
    require(tower in TOWERS, "towers.kind", f"must be one of {', '.join(TOWERS)}, got {tower!r}")
    return PRESETS[tower]


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    """One training run and its publication (``train`` is the preset with the
    training flags applied, see ``trainer.config``)."""

    dataset: str = option(help="data set to train on", choices=DATASET_NAMES)
    registry: Path = option(help="registry root", parse=Path)
    model: str = option(help="model name under the registry")
    data: DatasetOptions = option(DatasetOptions(), "data set options")
    split: str = option("random", "held-out split: random 80/20 (seeded), temporal (last 20% by time), "
                                  "leave-last-out (each customer's last interaction)", choices=SPLITS)
    test_fraction: float = option(0.2, "held-out share of the interactions (random and temporal splits)")
    max_test_interactions: int = option(100_000, "test interactions evaluated at most (a seeded sample beyond)")
    tune_budget_s: float = option(
        300.0, "seconds of hyperparameter search on the validation split (trainer.tuning); 0 trains the preset "
               "only, as the search's first trial: a value outside the search's range moves to its edge (an L2 of "
               "0 to 1e-4: pin --l2 0 to keep it), as metrics.json's config shows. The first trial always runs to "
               "its early stop, so a budget shorter than one trial is "
               "overrun. Flags given for training fields pin them; the search varies the rest. A search in time "
               "depends on the machine's speed: how many trials run, and so its winner")
    tune_trials: int = option(0, "run exactly this many search trials instead, each to its early stop, whatever "
                                 "the machine's speed or --tune-budget-s: the same flags, data and seed choose the "
                                 "same winner; 0: the time budget")
    index_shards: int = option(1, "split the published version's candidates into this many index shards (by a "
                                  "hash of the id), a ScaNN searcher each, served by index endpoints started with "
                                  "--shard 0..N-1; its merged recall@10 goes into the manifest")
    signing_key: str = option("", "PEM Ed25519 private key that signs the published version's manifest (services "
                                  "given its public key load only signed versions)", secret=True)
    train: TrainConfig = TrainConfig()
    # The training flags given on the command line (nested, as settings.flags.overrides
    # returns them): already in ``train``, and left alone by the search.
    pinned: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        require_valid(check_model_name, self.model, "model")
        require(0.0 < self.test_fraction < 1.0, "test_fraction", "must be in (0, 1)")
        require(self.max_test_interactions >= 1, "max_test_interactions", "must be a positive integer")
        # inf: no trial cap, so the search would never end (and never publish).
        require(0 <= self.tune_budget_s < math.inf, "tune_budget_s", "must be >= 0 and finite")
        require(self.tune_trials >= 0, "tune_trials", "must be >= 0 (0: as many as --tune-budget-s allows)")
        require(self.index_shards >= 1, "index_shards", "must be >= 1")
        if self.signing_key:
            try:
                signing.private_key(self.signing_key)
            except ValueError as e:
                raise ConfigError("signing_key", f"is not a usable key: {e}") from None
        try:
            check_options(self.dataset, self.data)
        except ConfigError as e:
            raise ConfigError(f"data.{e.field}", e.message) from None
        towers = self.train.towers
        if towers.time_features and self.dataset in ("interactions-csv", "sessions"):
            require(self.data.time_col is not None, "train.towers.time_features",
                    "needs --time-col: without it the times are row numbers, and every request time serving passes "
                    "would fall past them")
        if towers.candidate_features:
            require(self.dataset == "movielens-100k" or bool(self.data.catalog_path and self.data.catalog_feature_cols),
                    "train.towers.candidate_features", "needs catalogue columns to take: --catalog-path and "
                    "--catalog-feature-cols (--dataset interactions-csv), or movielens-100k's u.item")
        if self.train.towers.candidate_features or self.train.towers.kind == "features":
            for column in self.data.catalog_feature_cols:
                require(_TOWER_INPUT_NAME.fullmatch(column) is not None, "data.catalog_feature_cols",
                        f"column {column!r} cannot be a candidate tower input (its SavedModel input name): "
                        "rename it to letters, digits and '_', starting with a letter")
