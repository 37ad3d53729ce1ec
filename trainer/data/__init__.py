"""Interaction data: the ``Interactions`` type, loaders (MovieLens 100K, the
synthetic generator, interaction and session files), train/test splits, and
``generators``: realistic data sets in real files' formats (Yelp, Food.com,
RetailRocket, tool usage)."""

from trainer.data.datasets import DATASET_NAMES, DatasetOptions, load_dataset
from trainer.data.interactions import Interactions
from trainer.data.split import SPLITS, make_split

__all__ = ["DATASET_NAMES", "SPLITS", "DatasetOptions", "Interactions", "load_dataset", "make_split"]
