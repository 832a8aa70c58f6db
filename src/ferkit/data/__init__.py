"""FER2013 in every form it comes in, as one dataset type."""

from ferkit.data.dataset import FerDataset
from ferkit.data.loader import load_dataset, resolve_data_path
from ferkit.data.stats import class_weights, dataset_info

__all__ = ["FerDataset", "load_dataset", "resolve_data_path", "class_weights", "dataset_info"]
