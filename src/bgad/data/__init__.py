"""The data side of the method: datasets and their layouts, images, the few-shot split, dataset checks and
synthetic anomalies. Nothing here knows about features or flows."""

from .checks import DatasetReport, check_dataset
from .layouts import DatasetSpec, load_btad, load_folders, load_manifest, load_mvtec, load_visa
from .samples import GOOD, Category, Sample, Split, make_split

__all__ = [
    "GOOD",
    "Category",
    "DatasetReport",
    "DatasetSpec",
    "Sample",
    "Split",
    "check_dataset",
    "load_btad",
    "load_folders",
    "load_manifest",
    "load_mvtec",
    "load_visa",
    "make_split",
]
