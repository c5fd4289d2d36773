"""Data sets in their real distributed formats, held-out validation splits, and batch augmentation."""

from training.data.registry import DATASETS, Dataset, DataSplits, load_splits

__all__ = ["DATASETS", "Dataset", "DataSplits", "load_splits"]
